#include "augment.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../common/parallel.h"
#include "convert.h"
#include "planar.h"
#include "resample.h"
#include "value_recipe.h"

namespace fastloader {
namespace {

struct Scratch {
  ResampleAxis ax, ay;
  std::vector<uint8_t> roi, oriented, resized, tmp;
  PlanarScratch planar;

  // One huge image must not pin hundreds of MB per thread for the rest of the run.
  void trim() {
    constexpr size_t kKeep = size_t(64) << 20;
    for (std::vector<uint8_t>* v : {&roi, &oriented, &resized, &tmp, &planar.decoded, &planar.planes,
                                    &planar.levels, &planar.tmp})
      if (v->capacity() > kKeep) std::vector<uint8_t>().swap(*v);
  }
};

// Copies a finished output row to the batch with non-temporal stores where aligned: a
// batch is far larger than the caches, and plain stores would first read every line back.
inline void stream_row(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
#if defined(__AVX2__)
  const size_t head = std::min(bytes, size_t(-reinterpret_cast<uintptr_t>(d) & 31));
  std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 32 <= bytes; i += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(d, s, bytes);
#endif
}

// The output is written from one value table per channel: out = table[c][pixel], a row at
// a time through `row` (scratch of at least W * C values). Pixel i's channel c is
// pixels[i * C + c], or, kPlanar, pixels[c * H * W + i].
template <typename T, int C, bool kNHWC, bool kPlanar>
void write_sample(const uint8_t* pixels, int H, int W, bool flip, const T* table, T* row, T* out) {
  const size_t plane = size_t(H) * W;
  auto at = [&](size_t i, int c) { return kPlanar ? c * plane + i : i * C + c; };
  for (int y = 0; y < H; ++y) {
    const size_t first = size_t(y) * W;
    if constexpr (kNHWC) {
      for (int x = 0; x < W; ++x) {
        const size_t i = first + size_t(flip ? W - 1 - x : x);
        for (int c = 0; c < C; ++c) row[x * C + c] = table[c * 256 + pixels[at(i, c)]];
      }
      stream_row(out + first * C, row, sizeof(T) * W * C);
    } else {
      for (int c = 0; c < C; ++c) {
        const T* tc = table + c * 256;
        if (flip)
          for (int x = 0; x < W; ++x) row[x] = tc[pixels[at(first + W - 1 - x, c)]];
        else
          for (int x = 0; x < W; ++x) row[x] = tc[pixels[at(first + x, c)]];
        stream_row(out + (size_t(c) * H + y) * W, row, sizeof(T) * W);
      }
    }
  }
#if defined(__AVX2__)
  _mm_sfence();  // the streamed stores are visible before the batch is handed back
#endif
}

#if defined(__AVX2__)
// Channel c's value of 8 pixels: their bytes, as 32-bit lanes.
struct PlanarPicker {
  __m128i lo[3], hi[3];  // channel c of pixels 0-4 from bytes 0-15, of pixels 5-7 from 12-27

  PlanarPicker() {
    for (int c = 0; c < 3; ++c) {
      alignas(16) int8_t l[16], h[16];
      for (int i = 0; i < 16; ++i) l[i] = h[i] = -1;
      for (int i = 0; i < 5; ++i) l[i] = int8_t(3 * i + c);
      for (int i = 5; i < 8; ++i) h[i] = int8_t(3 * i + c - 12);
      lo[c] = _mm_load_si128(reinterpret_cast<const __m128i*>(l));
      hi[c] = _mm_load_si128(reinterpret_cast<const __m128i*>(h));
    }
  }

  // src needs 28 readable bytes (the second load runs past the 8th pixel).
  __m256i operator()(const uint8_t* src, int c) const {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 12));
    return _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(a, lo[c]), _mm_shuffle_epi8(b, hi[c])));
  }
};

// write_sample<float, 3, NCHW> with AVX2, 8 pixels of one channel at a time. Values come
// from the table with a gather, or, when `recipe` is given (the table's own float32
// steps, checked against it by checked_recipe), are computed: the gather is the slow part.
// pixels needs 4 readable bytes past its end.
void write_rgb_planar_f32(const uint8_t* pixels, int H, int W, bool flip, const float* table,
                          const ValueRecipe* recipe, float* out) {
  const __m256i reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  const PlanarPicker pick;
  const int W8 = W & ~7;
  with_values(recipe, table, 3, [&](const auto& values) {
    for (int y = 0; y < H; ++y) {
      const uint8_t* in = pixels + size_t(y) * W * 3;
      for (int c = 0; c < 3; ++c) {
        float* dst = out + (size_t(c) * H + y) * W;
        const bool aligned = (reinterpret_cast<uintptr_t>(dst) & 31) == 0;
        for (int x = 0; x < W8; x += 8) {
          // Output x..x+7 come from source pixels x..x+7, or W-8-x..W-1-x reversed.
          __m256i idx = pick(in + size_t(flip ? W - 8 - x : x) * 3, c);
          if (flip) idx = _mm256_permutevar8x32_epi32(idx, reverse);
          const __m256 v = values.template apply<simd::F8>(c, _mm256_cvtepi32_ps(idx));
          if (aligned)
            _mm256_stream_ps(dst + x, v);
          else
            _mm256_storeu_ps(dst + x, v);
        }
        for (int x = W8; x < W; ++x) dst[x] = table[c * 256 + in[(flip ? W - 1 - x : x) * 3 + c]];
      }
    }
  });
  _mm_sfence();
}
#endif

// One sample's uint8 pixels (interleaved, or R, G, B planes when `planar`) into `out`.
template <typename T>
void write_sample(const uint8_t* pixels, bool planar, const BatchSpec& spec, bool flip, const T* table,
                  const ValueRecipe* recipe, T* out) {
  const int H = spec.out_h, W = spec.out_w;
  const bool nhwc = spec.layout == Layout::NHWC;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (spec.mode == ColorMode::RGB && !nhwc && !planar) {
      write_rgb_planar_f32(pixels, H, W, flip, table, recipe, out);
      return;
    }
  }
#endif
  thread_local std::vector<uint8_t> scratch;
  scratch.resize(sizeof(T) * W * 3);
  T* row = reinterpret_cast<T*>(scratch.data());
  if (spec.mode != ColorMode::RGB)
    write_sample<T, 1, true, false>(pixels, H, W, flip, table, row, out);  // one channel: same layout
  else if (planar)
    nhwc ? write_sample<T, 3, true, true>(pixels, H, W, flip, table, row, out)
         : write_sample<T, 3, false, true>(pixels, H, W, flip, table, row, out);
  else
    nhwc ? write_sample<T, 3, true, false>(pixels, H, W, flip, table, row, out)
         : write_sample<T, 3, false, false>(pixels, H, W, flip, table, row, out);
}

struct OutputTables {
  std::vector<uint8_t> u8;
  std::vector<float> f32;
  std::vector<uint16_t> u16;  // float16 or bfloat16 bits
  std::vector<ValueRecipe> steps;  // per channel, where spec.recipe reproduces the table
  const ValueRecipe* recipe = nullptr;

  OutputTables(const BatchSpec& spec) {
    if (const float* r = checked_recipe(spec)) {
      for (int c = 0; c < channels_of(spec.mode); ++c) steps.push_back(ValueRecipe::of(r[3 * c], r[3 * c + 1], r[3 * c + 2]));
      recipe = steps.data();
    }
    const int n = channels_of(spec.mode) * 256;
    std::vector<float> values(n);
    for (int i = 0; i < n; ++i) values[i] = spec.lut ? spec.lut[i] : float(i % 256);
    switch (spec.dtype) {
      case OutDType::U8:
        u8.resize(n);
        for (int i = 0; i < n; ++i) u8[i] = uint8_t(i % 256);
        break;
      case OutDType::F32: f32 = values; break;
      case OutDType::F16:
      case OutDType::BF16:
        u16.resize(n);
        for (int i = 0; i < n; ++i)
          u16[i] = spec.dtype == OutDType::F16 ? float_to_half(values[i]) : float_to_bf16(values[i]);
        break;
    }
  }

  void write(const uint8_t* pixels, const BatchSpec& spec, bool flip, void* out, bool planar = false) const {
    switch (spec.dtype) {
      case OutDType::U8: write_sample(pixels, planar, spec, flip, u8.data(), nullptr, static_cast<uint8_t*>(out)); break;
      case OutDType::F32: write_sample(pixels, planar, spec, flip, f32.data(), recipe, static_cast<float*>(out)); break;
      default: write_sample(pixels, planar, spec, flip, u16.data(), nullptr, static_cast<uint16_t*>(out)); break;
    }
  }

  // The same for a sample rendered as Y, Cb, Cr planes (planar.h).
  void write_planes(PlanarScratch& p, const BatchSpec& spec, bool flip, void* out) const {
    if (spec.dtype == OutDType::F32 && spec.layout == Layout::NCHW) {
      write_ycbcr_as_rgb_f32(p.planes.data(), spec.out_h, spec.out_w, flip, f32.data(), recipe, static_cast<float*>(out));
      return;
    }
    const size_t n = size_t(spec.out_h) * spec.out_w;
    p.levels.resize(3 * n);
    ycbcr_to_rgb_levels(p.planes.data(), n, p.levels.data());
    write(p.levels.data(), spec, flip, out, /*planar=*/true);
  }
};

void check_geometry(const SampleGeometry& g, int w, int h) {
  const bool ok = g.x0 >= 0 && g.y0 >= 0 && g.x1 <= w && g.y1 <= h && g.x0 < g.x1 &&
                  g.y0 < g.y1 && g.resize_w > 0 && g.resize_h > 0;
  if (!ok)
    throw JpegError("crop box (" + std::to_string(g.x0) + ", " + std::to_string(g.y0) + ", " +
                    std::to_string(g.x1) + ", " + std::to_string(g.y1) + ") outside the " +
                    std::to_string(w) + "x" + std::to_string(h) + " image");
}

// Produces the out_h x out_w x C uint8 pixels of one sample in s.resized or, where
// `planes_ok` and the image allows, its Y, Cb, Cr planes (planar.h) in s.planar.planes:
// returns true then.
bool render_sample(const ImageSource& src, const SampleGeometry& g, const BatchSpec& spec,
                   bool planes_ok, Scratch& s) {
  const int C = channels_of(spec.mode);
  const bool raw = src.raw_w > 0;
  JpegDecoder& dec = thread_decoder();
  int w = src.raw_w, h = src.raw_h, orientation = 1, scale = 8;
  if (!raw) {
    const JpegInfo info = dec.open(src.data, src.size, spec.apply_orientation, spec.limits);
    orientation = spec.apply_orientation ? info.orientation : 1;
    const bool swap = orientation_swaps_axes(orientation);
    w = swap ? info.height : info.width;
    h = swap ? info.width : info.height;
  }
  check_geometry(g, w, h);
  if (!raw && spec.dct_scaling) scale = choose_dct_scale(w, h, g);
  // Work in the frame of the scaled image whose origin is the box's first pixel.
  const int sw = scaled_dim(w, scale), sh = scaled_dim(h, scale);
  // Scaled pixel i holds original pixels [i * 8/k, (i + 1) * 8/k) counted from the stored
  // image's origin: the ratio is exactly k/8, and only the last, partial block differs. An
  // oriented axis that runs against the stored one starts with that block instead: its
  // pixels sit shifted by the part of the block the image lacks.
  const double rx = scale / 8.0, ry = rx;
  const double shift_x = orientation_reverses_x(orientation) ? sw / rx - w : 0.0;
  const double shift_y = orientation_reverses_y(orientation) ? sh / ry - h : 0.0;
  const double bx0 = (g.x0 + shift_x) * rx, bx1 = (g.x1 + shift_x) * rx;
  const double by0 = (g.y0 + shift_y) * ry, by1 = (g.y1 + shift_y) * ry;
  const int fx = int(std::floor(bx0)), fy = int(std::floor(by0));
  const int clip_w = std::min(sw, int(std::ceil(bx1))) - fx;
  const int clip_h = std::min(sh, int(std::ceil(by1))) - fy;
  if (planes_ok && !raw && scale == 8 && orientation == 1) {
    const LumaBox box{bx0, by0, bx1, by1, fx, fy, fx + clip_w, fy + clip_h};
    if (render_ycbcr_planes(dec, w, h, box, g.resize_w, g.resize_h, g.win_x, g.win_y, spec.out_w, spec.out_h,
                            spec.fast_idct, s.planar))
      return true;
  }
  s.ax.build(bx0 - fx, bx1 - fx, 0, clip_w, g.resize_w, g.win_x, spec.out_w);
  s.ay.build(by0 - fy, by1 - fy, 0, clip_h, g.resize_h, g.win_y, spec.out_h);
  s.resized.resize(size_t(spec.out_w) * spec.out_h * C + 4);  // + resample_u8's spare bytes
  const Rect roi{fx + s.ax.src_lo, fy + s.ay.src_lo, s.ax.src_hi - s.ax.src_lo,
                 s.ay.src_hi - s.ay.src_lo};
  if (roi.w <= 0 || roi.h <= 0) {  // the window is all padding
    std::fill(s.resized.begin(), s.resized.end(), 0);
    return false;
  }
  // The ROI's pixels, with the spare bytes resample_u8 reads past the end.
  constexpr size_t kSpare = 8;
  const size_t row_bytes = size_t(roi.w) * C;
  PixelView view;
  if (raw) {
    view = {src.data + (size_t(roi.y) * w + roi.x) * C, size_t(w) * C};
    if (roi.y + roi.h == h) {  // the last row is the caller's buffer's end: copy the ROI
      s.roi.resize(row_bytes * roi.h + kSpare);
      for (int y = 0; y < roi.h; ++y)
        std::memcpy(&s.roi[y * row_bytes], view.data + y * view.stride, row_bytes);
      view = {s.roi.data(), row_bytes};
    }
  } else {
    const bool swap = orientation_swaps_axes(orientation);
    const Rect stored = unorient_rect(roi, swap ? sh : sw, swap ? sw : sh, orientation);
    view = dec.decode(spec.mode, scale, stored, [&](size_t bytes) {
      s.roi.resize(bytes + kSpare);
      return s.roi.data();
    }, spec.fast_idct);
    if (orientation != 1) {
      s.oriented.resize(row_bytes * roi.h + kSpare);
      orient_image(view.data, view.stride, stored.w, stored.h, C, orientation, s.oriented.data());
      view = {s.oriented.data(), row_bytes};
    }
  }
  s.ax.rebase(s.ax.src_lo);
  s.ay.rebase(s.ay.src_lo);
  resample_u8(view.data, view.stride, C, s.ax, s.ay, s.resized.data(), s.tmp);
  return false;
}

}  // namespace

// spec.recipe when it computes exactly spec.lut, value for value, in float32 (so whatever
// made the table, the output is the same); else null.
const float* checked_recipe(const BatchSpec& spec) {
  if (!spec.recipe || !spec.lut) return nullptr;
  for (int c = 0; c < channels_of(spec.mode); ++c) {
    const float* r = spec.recipe + 3 * c;
    for (int v = 0; v < 256; ++v) {
      const float value = (float(v) * r[0] - r[1]) / r[2];
      if (std::memcmp(&value, &spec.lut[c * 256 + v], sizeof(float)) != 0) return nullptr;
    }
  }
  return spec.recipe;
}

// A DCT-scaled decode filters differently from the bilinear resize (each block keeps its
// low frequencies exactly): decoding at 1.5x the output size or more keeps every sample
// above 39 dB PSNR against a full decode + resize on our data, where 1x drops some to 30.
constexpr double kDctOversample = 1.5;

int choose_dct_scale(int width, int height, const SampleGeometry& g) {
  // Only 1/8, 1/4 and 1/2: libjpeg-turbo has fast reduced IDCTs for those, while 3/8..7/8
  // use generic ones that are slower than a full-size decode.
  for (int k : {1, 2, 4}) {
    const double r = k / 8.0;
    if ((g.x1 - g.x0) * r >= kDctOversample * g.resize_w &&
        (g.y1 - g.y0) * r >= kDctOversample * g.resize_h)
      return k;
  }
  return 8;
}

std::vector<ImageSize> probe_images(const std::vector<ImageSource>& images, bool apply_orientation,
                                    const DecodeLimits& limits, int num_threads) {
  const int n = static_cast<int>(images.size());
  std::vector<ImageSize> sizes(n);
  parallel_for(n, num_threads, [&](int i) {
    const ImageSource& src = images[i];
    if (src.raw_w > 0) {
      sizes[i] = {src.raw_w, src.raw_h, {}};
      return;
    }
    try {
      const JpegInfo info = thread_decoder().open(src.data, src.size, apply_orientation, limits);
      const bool swap = orientation_swaps_axes(info.orientation);
      sizes[i].width = swap ? info.height : info.width;
      sizes[i].height = swap ? info.width : info.height;
    } catch (const std::exception& e) {
      sizes[i].error = e.what();
    }
  });
  return sizes;
}

std::vector<std::string> augment_batch(const std::vector<ImageSource>& images,
                                       const std::vector<SampleGeometry>& geometry,
                                       const BatchSpec& spec, void* out) {
  const int n = static_cast<int>(images.size());
  const size_t sample_bytes =
      size_t(spec.out_h) * spec.out_w * channels_of(spec.mode) * dtype_size(spec.dtype);
  const OutputTables tables(spec);
  const bool planes_ok = spec.fast_color && spec.mode == ColorMode::RGB;
  std::vector<std::string> errors(n);
  parallel_for(n, spec.num_threads, [&](int i) {
    thread_local Scratch scratch;
    void* slot = static_cast<uint8_t*>(out) + sample_bytes * i;
    try {
      if (render_sample(images[i], geometry[i], spec, planes_ok, scratch))
        tables.write_planes(scratch.planar, spec, geometry[i].flip, slot);
      else
        tables.write(scratch.resized.data(), spec, geometry[i].flip, slot);
    } catch (const std::exception& e) {
      errors[i] = e.what();
      std::memset(slot, 0, sample_bytes);
    } catch (...) {
      errors[i] = "unknown error";
      std::memset(slot, 0, sample_bytes);
    }
    scratch.trim();
  });
  return errors;
}

}  // namespace fastloader
