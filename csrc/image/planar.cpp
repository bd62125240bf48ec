#include "planar.h"

#include <algorithm>
#include <cmath>

#include "simd_float.h"

namespace fastloader {
namespace {

// JFIF's YCbCr -> RGB (libjpeg's constants).
constexpr float kCrToR = 1.402f, kCbToG = -0.34414f, kCrToG = -0.71414f, kCbToB = 1.772f;

inline float level(float v) { return std::min(255.0f, std::max(0.0f, std::nearbyint(v))); }

}  // namespace

bool render_ycbcr_planes(JpegDecoder& dec, int w, int h, const LumaBox& box, int resize_w, int resize_h,
                         int win_x, int win_y, int out_w, int out_h, bool fast_idct, PlanarScratch& s) {
  const std::optional<JpegDecoder::ChromaSubsampling> sub = dec.planar_subsampling();
  if (!sub || win_x < 0 || win_y < 0 || win_x + out_w > resize_w || win_y + out_h > resize_h) return false;
  const int sx = sub->x, sy = sub->y;
  const int chroma_w = (w + sx - 1) / sx, chroma_h = (h + sy - 1) / sy;
  s.ax.build(box.x0, box.x1, box.clip_x0, box.clip_x1, resize_w, win_x, out_w);
  s.ay.build(box.y0, box.y1, box.clip_y0, box.clip_y1, resize_h, win_y, out_h);
  // Chroma pixel i covers luma pixels [i * s, (i + 1) * s): its centre sits between them,
  // as JPEG places it (and libjpeg's upsampling assumes).
  s.cx.build(box.x0 / sx, box.x1 / sx, box.clip_x0 / sx, std::min(chroma_w, (box.clip_x1 + sx - 1) / sx),
             resize_w, win_x, out_w);
  s.cy.build(box.y0 / sy, box.y1 / sy, box.clip_y0 / sy, std::min(chroma_h, (box.clip_y1 + sy - 1) / sy),
             resize_h, win_y, out_h);
  for (const ResampleAxis* a : {&s.ax, &s.ay, &s.cx, &s.cy})
    if (a->src_lo >= a->src_hi) return false;
  const int x0 = std::min(s.ax.src_lo, s.cx.src_lo * sx), y0 = std::min(s.ay.src_lo, s.cy.src_lo * sy);
  const int x1 = std::min(w, std::max(s.ax.src_hi, s.cx.src_hi * sx));
  const int y1 = std::min(h, std::max(s.ay.src_hi, s.cy.src_hi * sy));
  const JpegDecoder::Planes p = dec.decode_planes(Rect{x0, y0, x1 - x0, y1 - y0}, [&](size_t bytes) {
    s.decoded.resize(bytes);
    return s.decoded.data();
  }, fast_idct);
  s.ax.rebase(p.x0[0]);
  s.ay.rebase(p.y0[0]);
  s.cx.rebase(p.x0[1]);
  s.cy.rebase(p.y0[1]);
  const size_t n = size_t(out_w) * out_h;
  s.planes.resize(3 * n);
  resample_plane(p.data[0], p.stride[0], s.ax, s.ay, s.planes.data(), s.tmp);
  resample_plane(p.data[1], p.stride[1], s.cx, s.cy, s.planes.data() + n, s.tmp);
  resample_plane(p.data[2], p.stride[2], s.cx, s.cy, s.planes.data() + 2 * n, s.tmp);
  return true;
}

#if defined(__AVX2__)
namespace {

// The R, G, B levels of S::kLanes pixels at `at` (mirrored when flipping), as floats.
template <class S>
struct Levels {
  const uint8_t *yp, *cbp, *crp;
  bool flip;

  void operator()(size_t at, typename S::V rgb[3]) const {
    using V = typename S::V;
    const V half = S::set1(128.0f), lo = S::set1(0.0f), hi = S::set1(255.0f);
    const V luma = S::load_u8(yp + at, flip);
    const V cb = S::sub(S::load_u8(cbp + at, flip), half), cr = S::sub(S::load_u8(crp + at, flip), half);
    rgb[0] = S::add(luma, S::mul(cr, S::set1(kCrToR)));
    rgb[1] = S::add(S::add(luma, S::mul(cb, S::set1(kCbToG))), S::mul(cr, S::set1(kCrToG)));
    rgb[2] = S::add(luma, S::mul(cb, S::set1(kCbToB)));
    for (int c = 0; c < 3; ++c) rgb[c] = S::min(hi, S::max(lo, S::round(rgb[c])));
  }
};

// Output pixels [x, ...) of row `row` (of w), S::kLanes at a time while they last: returns
// where it stopped.
template <class S, class Values>
int write_row_f32(const Levels<S>& pixels, size_t row, int x, int w, const Values& values, float* const dst[3]) {
  for (; x + S::kLanes <= w; x += S::kLanes) {
    typename S::V rgb[3];
    pixels(row + size_t(pixels.flip ? w - S::kLanes - x : x), rgb);
    for (int c = 0; c < 3; ++c) S::store(dst[c] + x, values.template apply<S>(c, rgb[c]));
  }
  return x;
}

}  // namespace
#endif

// The levels of one pixel, as Levels computes them.
static inline void levels(const uint8_t* yp, const uint8_t* cbp, const uint8_t* crp, size_t at, float rgb[3]) {
  const float luma = yp[at], cb = cbp[at] - 128.0f, cr = crp[at] - 128.0f;
  rgb[0] = level(luma + cr * kCrToR);
  rgb[1] = level(luma + cb * kCbToG + cr * kCrToG);
  rgb[2] = level(luma + cb * kCbToB);
}

void ycbcr_to_rgb_levels(const uint8_t* planes, size_t n, uint8_t* rgb) {
  const uint8_t *yp = planes, *cbp = planes + n, *crp = planes + 2 * n;
  size_t i = 0;
#if defined(__AVX2__)
  const Levels<simd::F8> pixels{yp, cbp, crp, false};
  for (; i + 8 <= n; i += 8) {
    __m256 v[3];
    pixels(i, v);
    for (int c = 0; c < 3; ++c) {
      const __m256i words = _mm256_packs_epi32(_mm256_cvtps_epi32(v[c]), _mm256_setzero_si256());
      const __m256i bytes = _mm256_packus_epi16(words, words);  // pixels 0-3 in lane 0, 4-7 in lane 1
      const __m256i both = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(rgb + c * n + i), _mm256_castsi256_si128(both));
    }
  }
#endif
  for (; i < n; ++i) {
    float v[3];
    levels(yp, cbp, crp, i, v);
    for (int c = 0; c < 3; ++c) rgb[c * n + i] = static_cast<uint8_t>(v[c]);
  }
}

void write_ycbcr_as_rgb_f32(const uint8_t* planes, int h, int w, bool flip, const float* table,
                            const ValueRecipe* recipe, float* out) {
  const size_t n = size_t(w) * h;
  const uint8_t *yp = planes, *cbp = planes + n, *crp = planes + 2 * n;
  auto write_rows = [&]([[maybe_unused]] const auto& values) {
    for (int y = 0; y < h; ++y) {
      const size_t row = size_t(y) * w;
      float* const dst[3] = {out + row, out + n + row, out + 2 * n + row};
      int x = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
      x = write_row_f32(Levels<simd::F16>{yp, cbp, crp, flip}, row, x, w, values, dst);
#endif
#if defined(__AVX2__)
      x = write_row_f32(Levels<simd::F8>{yp, cbp, crp, flip}, row, x, w, values, dst);
#endif
      for (; x < w; ++x) {
        float v[3];
        levels(yp, cbp, crp, row + size_t(flip ? w - 1 - x : x), v);
        for (int c = 0; c < 3; ++c)
          dst[c][x] = recipe ? recipe[c](v[c]) : table[256 * c + int(v[c])];
      }
    }
  };
#if defined(__AVX2__)
  with_values(recipe, table, 3, write_rows);
  _mm_sfence();  // the streamed stores are visible before the batch is handed back
#else
  write_rows(nullptr);
#endif
}

}  // namespace fastloader
