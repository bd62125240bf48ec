#include "resample.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

namespace fastloader {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's PRECISION_BITS
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

inline double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace

void ResampleAxis::build(double in0, double in1, int clip0, int clip1, int out_size,
                         int out_offset, int out_count) {
  const double scale = (in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // bilinear support is 1
  ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  first.assign(out_count, 0);
  taps.assign(out_count, 0);
  coeffs.assign(size_t(out_count) * ksize, 0);
  std::vector<double> w(ksize);
  src_lo = clip1;
  src_hi = clip0;
  for (int i = 0; i < out_count; ++i) {
    const int xx = out_offset + i;
    if (xx < 0 || xx >= out_size) continue;  // padding
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    int xmax = static_cast<int>(center + support + 0.5);
    xmin = std::max(xmin, clip0);
    xmax = std::min(xmax, clip1) - xmin;
    if (xmax <= 0) continue;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      // PIL evaluates the filter at (x + xmin - center + 0.5) in its own frame, where the
      // clip region starts at 0: keep that frame so rounding matches.
      w[x] = triangle((x + (xmin - clip0) - (center - clip0) + 0.5) * ss);
      ww += w[x];
    }
    int32_t* k = &coeffs[size_t(i) * ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      k[x] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits)
                                        : 0.5 + v * (1 << kPrecisionBits));
    }
    first[i] = xmin;
    taps[i] = xmax;
    src_lo = std::min(src_lo, xmin);
    src_hi = std::max(src_hi, xmin + xmax);
  }
  if (src_lo >= src_hi) src_lo = src_hi = clip0;
}

void ResampleAxis::rebase(int origin) {
  for (int& f : first) f -= origin;
  src_lo -= origin;
  src_hi -= origin;
}

template <int C>
static void horizontal_pass(const uint8_t* src, size_t src_stride, int rows,
                            const ResampleAxis& ax, uint8_t* dst) {
  const int out_w = ax.out_count();
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src + size_t(y) * src_stride;
    uint8_t* out = dst + size_t(y) * out_w * C;
    for (int x = 0; x < out_w; ++x, out += C) {
      const uint8_t* s = in + size_t(ax.first[x]) * C;
      const int32_t* k = &ax.coeffs[size_t(x) * ax.ksize];
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = kHalf;
      for (int t = 0, n = ax.taps[x]; t < n; ++t, s += C)
        for (int c = 0; c < C; ++c) acc[c] += s[c] * k[t];
      for (int c = 0; c < C; ++c) out[c] = clip8(acc[c]);
    }
  }
}

// src holds the source rows from ay.src_lo on.
static void vertical_pass(const uint8_t* src, size_t row_bytes, const ResampleAxis& ay,
                          uint8_t* dst, std::vector<int32_t>& acc) {
  acc.resize(row_bytes);
  for (int y = 0, n = ay.out_count(); y < n; ++y) {
    std::fill(acc.begin(), acc.end(), kHalf);
    const int32_t* k = &ay.coeffs[size_t(y) * ay.ksize];
    const uint8_t* in = src + ptrdiff_t(ay.first[y] - ay.src_lo) * ptrdiff_t(row_bytes);
    int32_t* a = acc.data();
    for (int t = 0; t < ay.taps[y]; ++t, in += row_bytes) {
      const int32_t kt = k[t];
      for (size_t i = 0; i < row_bytes; ++i) a[i] += in[i] * kt;
    }
    uint8_t* out = dst + size_t(y) * row_bytes;
    for (size_t i = 0; i < row_bytes; ++i) out[i] = clip8(a[i]);
  }
}

void resample_u8(const uint8_t* src, size_t src_stride, int channels, const ResampleAxis& ax,
                 const ResampleAxis& ay, uint8_t* dst, std::vector<uint8_t>& tmp) {
  // Only the rows the vertical pass reads go through the horizontal pass.
  const int rows = ay.src_hi - ay.src_lo;
  const size_t row_bytes = size_t(ax.out_count()) * channels;
  tmp.resize(std::max<size_t>(1, size_t(rows) * row_bytes));
  const uint8_t* first_row = src + size_t(ay.src_lo) * src_stride;
  if (channels == 3)
    horizontal_pass<3>(first_row, src_stride, rows, ax, tmp.data());
  else
    horizontal_pass<1>(first_row, src_stride, rows, ax, tmp.data());
  thread_local std::vector<int32_t> acc;
  vertical_pass(tmp.data(), row_bytes, ay, dst, acc);
}

}  // namespace fastloader
