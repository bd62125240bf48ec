// torchvision's RandomResizedCrop box sampling, with a counter-based generator: sample i
// of a batch draws from its own stream of (seed, i), so boxes do not depend on threads.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastloader {

struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};

// torchvision.transforms.RandomResizedCrop.get_params: 10 tries at a random area fraction
// in [scale_lo, scale_hi] and log-uniform aspect ratio in [ratio_lo, ratio_hi], then the
// center crop of the clamped aspect ratio.
CropBox sample_resized_crop(int height, int width, double scale_lo, double scale_hi,
                            double ratio_lo, double ratio_hi, uint64_t seed, uint64_t index);

}  // namespace fastloader
