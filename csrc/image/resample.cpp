#include "resample.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#if defined(__SSSE3__)
#include <immintrin.h>
#endif

namespace fastloader {
namespace {

// 14-bit coefficients fit int16, so the horizontal pass can multiply-add two taps per
// instruction (pmaddwd), as PIL-SIMD does; PIL itself uses 22 bits.
constexpr int kPrecisionBits = 14;
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
  // One spare tap (always 0) so the horizontal pass can take taps in pairs.
  ksize = static_cast<int>(std::ceil(support)) * 2 + 2;
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
      // PIL evaluates the filter at (x + xmin - center + 0.5) in a frame where the clip
      // region starts at 0: keep that frame so rounding matches.
      w[x] = triangle((x + (xmin - clip0) - (center - clip0) + 0.5) * ss);
      ww += w[x];
    }
    int16_t* k = &coeffs[size_t(i) * ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      k[x] = static_cast<int16_t>(std::lround(v * (1 << kPrecisionBits)));
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

// dst row y = sum over taps t of src row (first[y] + t) * coeff, element-wise over
// row_elems bytes: contiguous, so the compiler vectorizes it.
static void vertical_pass(const uint8_t* src, size_t src_stride, size_t row_elems,
                          const ResampleAxis& ay, uint8_t* dst) {
  constexpr size_t kChunk = 512;
  int32_t acc[kChunk];
  for (int y = 0, n = ay.out_count(); y < n; ++y) {
    const int16_t* k = &ay.coeffs[size_t(y) * ay.ksize];
    const uint8_t* rows = src + ptrdiff_t(ay.first[y]) * ptrdiff_t(src_stride);
    const int taps = ay.taps[y];
    uint8_t* out = dst + size_t(y) * row_elems;
    for (size_t i0 = 0; i0 < row_elems; i0 += kChunk) {
      const size_t m = std::min(kChunk, row_elems - i0);
      for (size_t i = 0; i < m; ++i) acc[i] = kHalf;
      for (int t = 0; t < taps; ++t) {
        const uint8_t* in = rows + size_t(t) * src_stride + i0;
        const int32_t kt = k[t];
        for (size_t i = 0; i < m; ++i) acc[i] += in[i] * kt;
      }
      for (size_t i = 0; i < m; ++i) out[i0 + i] = clip8(acc[i]);
    }
  }
}

// Horizontal pass over interleaved pixels. For RGB, two taps per pmaddwd: an 8-byte load
// holds pixels t and t + 1, a shuffle pairs their channels as 16-bit values. Source rows
// need 8 readable bytes past their last pixel.
template <int C>
static void horizontal_pass(const uint8_t* src, size_t src_stride, int rows,
                            const ResampleAxis& ax, uint8_t* dst) {
  const int out_w = ax.out_count();
#if defined(__SSSE3__)
  const __m128i pair_channels =
      _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
#endif
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src + size_t(y) * src_stride;
    uint8_t* out = dst + size_t(y) * out_w * C;
    for (int x = 0; x < out_w; ++x, out += C) {
      const uint8_t* s = in + size_t(ax.first[x]) * C;
      const int16_t* k = &ax.coeffs[size_t(x) * ax.ksize];
      const int taps = ax.taps[x];
#if defined(__SSSE3__)
      if constexpr (C == 3) {
        __m128i acc = _mm_set1_epi32(kHalf);
        for (int t = 0; t < taps; t += 2, s += 6) {  // k[taps] is 0 when taps is odd
          const __m128i pix = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)),
                                               pair_channels);
          const int32_t kk = int32_t(uint16_t(k[t])) | (int32_t(k[t + 1]) << 16);
          acc = _mm_add_epi32(acc, _mm_madd_epi16(pix, _mm_set1_epi32(kk)));
        }
        acc = _mm_srai_epi32(acc, kPrecisionBits);
        acc = _mm_packs_epi32(acc, acc);
        const int32_t packed = _mm_cvtsi128_si32(_mm_packus_epi16(acc, acc));
        std::memcpy(out, &packed, 3);
        continue;
      }
#endif
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = kHalf;
      for (int t = 0; t < taps; ++t, s += C)
        for (int c = 0; c < C; ++c) acc[c] += s[c] * k[t];
      for (int c = 0; c < C; ++c) out[c] = clip8(acc[c]);
    }
  }
}

static void horizontal_any(const uint8_t* src, size_t src_stride, int rows, int channels,
                           const ResampleAxis& ax, uint8_t* dst) {
  if (channels == 3)
    horizontal_pass<3>(src, src_stride, rows, ax, dst);
  else
    horizontal_pass<1>(src, src_stride, rows, ax, dst);
}

void resample_u8(const uint8_t* src, size_t src_stride, int channels, const ResampleAxis& ax,
                 const ResampleAxis& ay, uint8_t* dst, std::vector<uint8_t>& tmp) {
  // The horizontal pass costs most per pixel: run it on whichever has fewer rows, the
  // source or the output. Each pass rounds to uint8, as PIL's do.
  const size_t c = size_t(channels);
  const int src_rows = ay.src_hi - ay.src_lo, out_h = ay.out_count(), out_w = ax.out_count();
  constexpr size_t kSpare = 8;  // the horizontal pass reads past its last pixel
  if (out_h <= src_rows) {
    const size_t row_elems = size_t(ax.src_hi) * c;
    tmp.resize(size_t(out_h) * row_elems + kSpare);
    vertical_pass(src, src_stride, row_elems, ay, tmp.data());
    horizontal_any(tmp.data(), row_elems, out_h, channels, ax, dst);
  } else {
    const size_t row_elems = size_t(out_w) * c;
    tmp.resize(size_t(src_rows) * row_elems);
    horizontal_any(src + size_t(ay.src_lo) * src_stride, src_stride, src_rows, channels, ax,
                   tmp.data());
    ResampleAxis shifted_y = ay;  // its rows now start at tmp's first row
    shifted_y.rebase(ay.src_lo);
    vertical_pass(tmp.data(), row_elems, row_elems, shifted_y, dst);
  }
}

}  // namespace fastloader
