// The fused op's path for YCbCr JPEGs: decode the crop's Y, Cb and Cr planes as stored,
// resample each (chroma from its own resolution), and convert colour at the output size,
// in the float32 write. It skips libjpeg-turbo's chroma upsampling and colour conversion,
// which run on the whole crop, and resamples half as many source pixels. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../jpeg/decode.h"
#include "resample.h"
#include "value_recipe.h"

namespace fastloader {

// A crop box in full-scale luma pixels: the source box [x0, x1) x [y0, y1), its taps
// clipped to the pixels [clip_x0, clip_x1) x [clip_y0, clip_y1).
struct LumaBox {
  double x0, y0, x1, y1;
  int clip_x0, clip_y0, clip_x1, clip_y1;
};

struct PlanarScratch {
  ResampleAxis ax, ay, cx, cy;  // luma and chroma axes
  std::vector<uint8_t> decoded, planes, levels, tmp;
};

// Renders the window (win_x, win_y, out_w x out_h) of `box` resized to resize_w x resize_h
// into s.planes (Y, Cb, Cr planes of out_h x out_w), from the image dec has open (size
// w x h, not oriented). False, with nothing decoded, when the image is not a YCbCr
// sequential JPEG or the window leaves the resized box (padding is black in RGB).
bool render_ycbcr_planes(JpegDecoder& dec, int w, int h, const LumaBox& box, int resize_w, int resize_h,
                         int win_x, int win_y, int out_w, int out_h, bool fast_idct, PlanarScratch& s);

// Y, Cb, Cr planes of n pixels -> R, G, B planes of uint8 levels: JFIF's conversion in
// float32, rounded and clamped (within a level of libjpeg's fixed-point one).
void ycbcr_to_rgb_levels(const uint8_t* planes, size_t n, uint8_t* rgb);

// The float32 RGB planes (NCHW) of Y, Cb, Cr planes of h x w, mirrored when `flip`: the
// levels ycbcr_to_rgb_levels computes, then recipe[c]'s value or, without one,
// table[256c + level].
void write_ycbcr_as_rgb_f32(const uint8_t* planes, int h, int w, bool flip, const float* table,
                            const ValueRecipe* recipe, float* out);

}  // namespace fastloader
