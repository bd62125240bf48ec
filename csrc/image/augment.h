// The fused batch op: per sample, decode at the smallest DCT scale that still covers the
// crop, decode only the rows/columns the crop needs, resize (antialiased bilinear),
// flip, convert/normalize, and write into the caller's batch buffer. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../jpeg/decode.h"

namespace fastloader {

enum class OutDType { U8 = 0, F32 = 1, F16 = 2, BF16 = 3 };
enum class Layout { NCHW = 0, NHWC = 1 };

inline size_t dtype_size(OutDType t) {
  return t == OutDType::U8 ? 1 : (t == OutDType::F32 ? 4 : 2);
}

// One input image: encoded JPEG bytes, or already decoded pixels (raw_w > 0) laid out
// raw_h x raw_w x channels (channels of the batch's mode), already oriented.
struct ImageSource {
  const uint8_t* data = nullptr;
  size_t size = 0;
  int raw_w = 0, raw_h = 0;
};

// Where one output comes from, in full-scale oriented image coordinates: the source box
// [x0, x1) x [y0, y1) (taps never leave it) is resized to resize_w x resize_h, and the
// output is the window at (win_x, win_y) of that; outside the resized box it is 0.
struct SampleGeometry {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  int resize_w = 0, resize_h = 0;
  int win_x = 0, win_y = 0;
  bool flip = false;
};

struct BatchSpec {
  int out_h = 0, out_w = 0;
  ColorMode mode = ColorMode::RGB;
  OutDType dtype = OutDType::U8;
  Layout layout = Layout::NCHW;
  const float* lut = nullptr;  // channels x 256 values for float outputs (null: value as is)
  // How lut was made, per channel (multiplier, mean, std): (v * multiplier - mean) / std
  // in float32. Optional; used only where it reproduces lut exactly.
  const float* recipe = nullptr;
  bool apply_orientation = false;
  bool dct_scaling = true;
  bool fast_idct = false;
  // RGB from YCbCr JPEGs at full scale: resample the planes as stored, convert colour at
  // the output size (planar.h), instead of resampling libjpeg's RGB as PIL would.
  bool fast_color = false;
  DecodeLimits limits;
  int num_threads = 1;
};

struct ImageSize {
  int width = 0, height = 0;  // after EXIF orientation when asked for
  std::string error;          // empty when the header was read
};

// Reads the size of every image (headers only), in parallel.
std::vector<ImageSize> probe_images(const std::vector<ImageSource>& images, bool apply_orientation,
                                    const DecodeLimits& limits, int num_threads);

// Fills sample i of `out` (a batch of out_h x out_w images in spec.layout and spec.dtype)
// for every i, in parallel. Returns one message per sample: empty when it succeeded.
// A failed sample's slot is zero-filled.
std::vector<std::string> augment_batch(const std::vector<ImageSource>& images,
                                       const std::vector<SampleGeometry>& geometry,
                                       const BatchSpec& spec, void* out);

// spec.recipe when it computes exactly spec.lut, value for value, in float32 (the kernel
// then computes values rather than look them up); else null.
const float* checked_recipe(const BatchSpec& spec);

// The DCT scale (k of k/8, k in 1, 2, 4, 8) decode would use: the smallest that keeps the
// decoded box at least 1.5x as large as the resized box in both axes.
int choose_dct_scale(int width, int height, const SampleGeometry& g);

}  // namespace fastloader
