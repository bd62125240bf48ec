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

// Taps t and t + 1 as the int16 pair pmaddwd multiplies by.
inline int32_t tap_pair(const int16_t* k, int t) {
  return int32_t(uint16_t(k[t])) | (int32_t(k[t + 1]) << 16);
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
  thread_local std::vector<double> w;
  w.resize(ksize);
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
      k[x] = static_cast<int16_t>(v * (1 << kPrecisionBits) + 0.5);  // v >= 0: lround, without the libm call
    }
    first[i] = xmin;
    taps[i] = xmax;
    src_lo = std::min(src_lo, xmin);
    src_hi = std::max(src_hi, xmin + xmax);
  }
  if (src_lo >= src_hi) src_lo = src_hi = clip0;
  for (int i = 0; i < out_count; ++i)
    if (taps[i] == 0) first[i] = src_lo;  // padding: keep its (unused) pointer in range
}

void ResampleAxis::rebase(int origin) {
  for (int& f : first) f -= origin;
  src_lo -= origin;
  src_hi -= origin;
}

#if defined(__AVX2__)
// 16 bytes of rows a and b, times (ka, kb), added to the 16 int32 sums in lo/hi.
static inline void madd_rows(const uint8_t* a, const uint8_t* b, __m256i kk, __m256i& lo,
                             __m256i& hi) {
  const __m256i wa = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
  const __m256i wb = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
  // unpack works within 128-bit lanes: lo holds elements 0-3 and 8-11, hi 4-7 and 12-15.
  lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(wa, wb), kk));
  hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(wa, wb), kk));
}
#endif

// dst row y = sum over taps t of src row (first[y] - first_row + t) * coeff, element-wise
// over row_elems contiguous bytes; src starts at source row first_row.
static void vertical_pass(const uint8_t* src, size_t src_stride, size_t row_elems,
                          const ResampleAxis& ay, int first_row, uint8_t* dst) {
  constexpr size_t kChunk = 512;
  int32_t acc[kChunk];
  for (int y = 0, n = ay.out_count(); y < n; ++y) {
    const int16_t* k = &ay.coeffs[size_t(y) * ay.ksize];
    const uint8_t* rows = src + ptrdiff_t(ay.first[y] - first_row) * ptrdiff_t(src_stride);
    const int taps = ay.taps[y];
    uint8_t* out = dst + size_t(y) * row_elems;
    size_t done = 0;
#if defined(__AVX2__)
    // Two taps per pmaddwd. An odd last tap pairs with the zero coefficient past it,
    // times its own row again: no row past the taps is read. The pairs' coefficients
    // and rows are set up once per output row (the byte stores below may alias
    // anything, so the compiler would reload them in the loop).
    constexpr int kMaxPairs = 8;
    const int pairs = (taps + 1) / 2;
    if (pairs <= kMaxPairs) {
      __m256i kk[kMaxPairs];
      const uint8_t* ra[kMaxPairs];
      const uint8_t* rb[kMaxPairs];
      for (int j = 0; j < pairs; ++j) {
        kk[j] = _mm256_set1_epi32(tap_pair(k, 2 * j));
        ra[j] = rows + size_t(2 * j) * src_stride;
        rb[j] = 2 * j + 1 < taps ? ra[j] + src_stride : ra[j];
      }
      auto sum16 = [&](size_t at) {  // 16 output bytes at offset `at`
        __m256i lo = _mm256_set1_epi32(kHalf), hi = lo;
        for (int j = 0; j < pairs; ++j) madd_rows(ra[j] + at, rb[j] + at, kk[j], lo, hi);
        lo = _mm256_srai_epi32(lo, kPrecisionBits);
        hi = _mm256_srai_epi32(hi, kPrecisionBits);
        return _mm256_packs_epi32(lo, hi);  // 16 words, in element order per lane
      };
      for (; done + 32 <= row_elems; done += 32) {
        const __m256i bytes = _mm256_packus_epi16(sum16(done), sum16(done + 16));
        // lanes hold (elements 0-7, 16-23 | 8-15, 24-31): put the qwords back in order
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + done), _mm256_permute4x64_epi64(bytes, 0xD8));
      }
      for (; done + 16 <= row_elems; done += 16) {
        const __m256i w = sum16(done);
        const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + done), _mm256_castsi256_si128(bytes));
      }
    }
#endif
    for (size_t i0 = done; i0 < row_elems; i0 += kChunk) {
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
// holds pixels t and t + 1, a shuffle pairs their channels as 16-bit values; with AVX2 two
// output pixels share one register. Coefficients past an output's taps are 0, and source
// rows need 8 readable bytes past their last pixel.
#if defined(__SSSE3__)
static inline __m128i pair_channels() {
  return _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
}

// Writes 4 bytes: the 4th is overwritten by the next pixel or lands in the spare byte.
static inline void store_rgb(__m128i acc, uint8_t* out) {
  acc = _mm_srai_epi32(acc, kPrecisionBits);
  acc = _mm_packs_epi32(acc, acc);
  _mm_storeu_si32(out, _mm_packus_epi16(acc, acc));
}

static inline void rgb_pixel(const uint8_t* s, const int16_t* k, int taps, uint8_t* out) {
  __m128i acc = _mm_set1_epi32(kHalf);
  for (int t = 0; t < taps; t += 2, s += 6) {
    const __m128i pix = _mm_shuffle_epi8(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)), pair_channels());
    acc = _mm_add_epi32(acc, _mm_madd_epi16(pix, _mm_set1_epi32(tap_pair(k, t))));
  }
  store_rgb(acc, out);
}
#endif

#if defined(__AVX2__)
// Coefficients of output pixels x and x + 1 for taps (2j, 2j + 1), laid out as pmaddwd
// wants them: 4 lanes of pixel x's pair, then 4 of pixel x + 1's. Row-independent, so
// built once per image rather than in the inner loop.
struct alignas(32) TapPairs {
  int32_t lanes[8];
};

static void build_pair_coeffs(const ResampleAxis& ax, std::vector<TapPairs>& pairs, int& pairs_per_x) {
  const int out_w = ax.out_count();
  // As many pairs as the widest output needs (ksize has room for a tap or two more).
  const int max_taps = out_w ? *std::max_element(ax.taps.begin(), ax.taps.end()) : 0;
  pairs_per_x = std::max(1, (max_taps + 1) / 2);
  pairs.resize(size_t(out_w / 2) * pairs_per_x);
  for (int x = 0; x + 1 < out_w; x += 2)
    for (int j = 0; j < pairs_per_x; ++j) {
      const int32_t k0 = tap_pair(&ax.coeffs[size_t(x) * ax.ksize], 2 * j);
      const int32_t k1 = tap_pair(&ax.coeffs[size_t(x + 1) * ax.ksize], 2 * j);
      pairs[size_t(x / 2) * pairs_per_x + j] = {{k0, k0, k0, k0, k1, k1, k1, k1}};
    }
}

// The sums of output pixels x (low lane) and x + 1 (high lane) over kPairs tap pairs
// (`pairs` when kPairs is 0), shifted back to pixel values: per lane c0, c1, c2, 0.
template <int kPairs>
static inline __m256i rgb_pair_sums(const uint8_t* s0, const uint8_t* s1, const TapPairs* kk,
                                    int pairs) {
  const __m256i shuffle = _mm256_broadcastsi128_si256(pair_channels());
  __m256i acc = _mm256_set1_epi32(kHalf);
  const int n = kPairs > 0 ? kPairs : pairs;
  for (int j = 0; j < n; ++j) {
    const __m256i pix = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s0 + 6 * j))),
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s1 + 6 * j)), 1);
    const __m256i k = _mm256_load_si256(reinterpret_cast<const __m256i*>(kk[j].lanes));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_shuffle_epi8(pix, shuffle), k));
  }
  return _mm256_srai_epi32(acc, kPrecisionBits);
}

// Writes 8 bytes: pixels x and x + 1, then 2 bytes that the next pixel rewrites (or spare).
static inline void store_pair(__m256i sums, uint8_t* out) {
  const __m256i words = _mm256_packs_epi32(sums, sums);
  const __m256i bytes = _mm256_packus_epi16(words, words);
  const uint64_t lo = uint32_t(_mm256_cvtsi256_si32(bytes));
  const uint64_t hi = uint32_t(_mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1)));
  const uint64_t both = (lo & 0xFFFFFF) | ((hi & 0xFFFFFF) << 24);
  std::memcpy(out, &both, 8);
}

// Writes 16 bytes: pixels x .. x + 3 from two pairs' sums, then 4 bytes rewritten later.
static inline void store_quad(__m256i sums01, __m256i sums23, uint8_t* out) {
  const __m256i words = _mm256_packs_epi32(sums01, sums23);  // lanes: (p0, p2 | p1, p3)
  const __m256i bytes = _mm256_packus_epi16(words, words);   // dwords 0, 1 | 4, 5
  const __m256i order = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
  const __m128i packed = _mm_shuffle_epi8(
      _mm256_castsi256_si128(order), _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}

// The RGB rows with every output using the axis's widest kernel (zero-padded), so loop
// counts are fixed: no branch misses on taps that vary by one from pixel to pixel.
// Outputs whose kernel would read past the row's valid pixels take their exact taps.
// Within a row, pixels are written left to right (each store's spare bytes land on the
// next pixel, written after it).
template <int kPairs>
static void rgb_rows(const uint8_t* src, size_t src_stride, int rows, const ResampleAxis& ax,
                     const TapPairs* pairs, int pairs_per_x, uint8_t* dst) {
  const int out_w = ax.out_count();
  const int* first = ax.first.data();
  const int* taps = ax.taps.data();
  const int limit = ax.src_hi - 2 * pairs_per_x;  // a whole kernel fits from first <= limit
  int quads = 0;  // outputs [0, quads) go four at a time
  while (quads + 3 < out_w &&
         std::max(std::max(first[quads], first[quads + 1]), std::max(first[quads + 2], first[quads + 3])) <= limit)
    quads += 4;
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src + size_t(y) * src_stride;
    uint8_t* out = dst + size_t(y) * out_w * 3;
    int x = 0;
    for (; x < quads; x += 4) {
      const TapPairs* kk = pairs + size_t(x / 2) * pairs_per_x;
      const __m256i s01 = rgb_pair_sums<kPairs>(in + size_t(first[x]) * 3, in + size_t(first[x + 1]) * 3,
                                                kk, pairs_per_x);
      const __m256i s23 = rgb_pair_sums<kPairs>(in + size_t(first[x + 2]) * 3, in + size_t(first[x + 3]) * 3,
                                                kk + pairs_per_x, pairs_per_x);
      store_quad(s01, s23, out + x * 3);
    }
    for (; x + 1 < out_w; x += 2) {
      const TapPairs* kk = pairs + size_t(x / 2) * pairs_per_x;
      const uint8_t* s0 = in + size_t(first[x]) * 3;
      const uint8_t* s1 = in + size_t(first[x + 1]) * 3;
      if (std::max(first[x], first[x + 1]) <= limit) {
        store_pair(rgb_pair_sums<kPairs>(s0, s1, kk, pairs_per_x), out + x * 3);
      } else {
        // Each pixel with its own taps: a pair shares one tap count, and the larger
        // one, from the other pixel's start, can reach well past the row's spare bytes.
        rgb_pixel(s0, &ax.coeffs[size_t(x) * ax.ksize], taps[x], out + x * 3);
        rgb_pixel(s1, &ax.coeffs[size_t(x + 1) * ax.ksize], taps[x + 1], out + (x + 1) * 3);
      }
    }
    if (x < out_w)  // odd width: the last pixel alone
      rgb_pixel(in + size_t(first[x]) * 3, &ax.coeffs[size_t(x) * ax.ksize], taps[x], out + x * 3);
  }
}
#endif

template <int C>
static void horizontal_pass(const uint8_t* src, size_t src_stride, int rows,
                            const ResampleAxis& ax, uint8_t* dst) {
  const int out_w = ax.out_count();
  const size_t ks = size_t(ax.ksize);
#if defined(__AVX2__)
  if constexpr (C == 3) {
    thread_local std::vector<TapPairs> pair_buffer;
    int pairs_per_x = 0;
    build_pair_coeffs(ax, pair_buffer, pairs_per_x);
    const TapPairs* pairs = pair_buffer.data();
    switch (pairs_per_x) {
      case 1: rgb_rows<1>(src, src_stride, rows, ax, pairs, pairs_per_x, dst); break;
      case 2: rgb_rows<2>(src, src_stride, rows, ax, pairs, pairs_per_x, dst); break;
      case 3: rgb_rows<3>(src, src_stride, rows, ax, pairs, pairs_per_x, dst); break;
      case 4: rgb_rows<4>(src, src_stride, rows, ax, pairs, pairs_per_x, dst); break;
      default: rgb_rows<0>(src, src_stride, rows, ax, pairs, pairs_per_x, dst); break;
    }
    return;
  }
#endif
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src + size_t(y) * src_stride;
    uint8_t* out = dst + size_t(y) * out_w * C;
    for (int x = 0; x < out_w; ++x) {
      const uint8_t* s = in + size_t(ax.first[x]) * C;
      const int16_t* k = &ax.coeffs[x * ks];
      const int taps = ax.taps[x];
#if defined(__SSSE3__)
      if constexpr (C == 3) {
        rgb_pixel(s, k, taps, out + x * 3);
        continue;
      }
#endif
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = kHalf;
      for (int t = 0; t < taps; ++t, s += C)
        for (int c = 0; c < C; ++c) acc[c] += s[c] * k[t];
      for (int c = 0; c < C; ++c) out[x * C + c] = clip8(acc[c]);
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

// dst[c][r] = src[r][c] for a rows x cols block of bytes.
static void transpose_u8(const uint8_t* src, size_t src_stride, int rows, int cols, uint8_t* dst,
                         size_t dst_stride) {
  int r0 = 0;
#if defined(__SSE2__)
  for (; r0 + 16 <= rows; r0 += 16) {
    int c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      __m128i v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + size_t(r0 + i) * src_stride + c0));
      // Four rounds of interleaving, bytes to qwords: row i, column j ends at row j, column i.
      __m128i t[16];
      for (int i = 0; i < 8; ++i) {
        t[i] = _mm_unpacklo_epi8(v[2 * i], v[2 * i + 1]);
        t[i + 8] = _mm_unpackhi_epi8(v[2 * i], v[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm_unpacklo_epi16(t[2 * i], t[2 * i + 1]);
        v[i + 4] = _mm_unpackhi_epi16(t[2 * i], t[2 * i + 1]);
        v[i + 8] = _mm_unpacklo_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
        v[i + 12] = _mm_unpackhi_epi16(t[8 + 2 * i], t[8 + 2 * i + 1]);
      }
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 2; ++i) {
          t[4 * q + i] = _mm_unpacklo_epi32(v[4 * q + 2 * i], v[4 * q + 2 * i + 1]);
          t[4 * q + i + 2] = _mm_unpackhi_epi32(v[4 * q + 2 * i], v[4 * q + 2 * i + 1]);
        }
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 2; ++i) {
          v[4 * q + 2 * i] = _mm_unpacklo_epi64(t[4 * q + 2 * i], t[4 * q + 2 * i + 1]);
          v[4 * q + 2 * i + 1] = _mm_unpackhi_epi64(t[4 * q + 2 * i], t[4 * q + 2 * i + 1]);
        }
      for (int i = 0; i < 16; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + size_t(c0 + i) * dst_stride + r0), v[i]);
    }
    for (int c = c0; c < cols; ++c)
      for (int r = r0; r < r0 + 16; ++r) dst[size_t(c) * dst_stride + r] = src[size_t(r) * src_stride + c];
  }
#endif
  for (int r = r0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[size_t(c) * dst_stride + r] = src[size_t(r) * src_stride + c];
}

void resample_plane(const uint8_t* src, size_t src_stride, const ResampleAxis& ax,
                    const ResampleAxis& ay, uint8_t* dst, std::vector<uint8_t>& tmp) {
  // One channel: both passes vertical (whole rows at a time, in SIMD), the second on the
  // transposed image, and the result transposed back.
  const int out_w = ax.out_count(), out_h = ay.out_count();
  const int lo = ax.src_lo, cols = ax.src_hi - ax.src_lo;
  const size_t a_bytes = size_t(out_h) * cols, b_bytes = a_bytes, c_bytes = size_t(out_w) * out_h;
  tmp.resize(a_bytes + b_bytes + c_bytes);
  uint8_t* a = tmp.data();  // out_h x cols
  uint8_t* b = a + a_bytes;  // cols x out_h
  uint8_t* c = b + b_bytes;  // out_w x out_h
  vertical_pass(src + lo, src_stride, size_t(cols), ay, 0, a);
  transpose_u8(a, size_t(cols), out_h, cols, b, size_t(out_h));
  vertical_pass(b, size_t(out_h), size_t(out_h), ax, lo, c);
  transpose_u8(c, size_t(out_h), out_w, out_h, dst, size_t(out_w));
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
    vertical_pass(src, src_stride, row_elems, ay, 0, tmp.data());
    horizontal_any(tmp.data(), row_elems, out_h, channels, ax, dst);
  } else {
    const size_t row_elems = size_t(out_w) * c;
    tmp.resize(size_t(src_rows) * row_elems + kSpare);
    horizontal_any(src + size_t(ay.src_lo) * src_stride, src_stride, src_rows, channels, ax,
                   tmp.data());
    vertical_pass(tmp.data(), row_elems, row_elems, ay, ay.src_lo, dst);
  }
}

}  // namespace fastloader
