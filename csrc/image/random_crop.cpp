#include "random_crop.h"

#include <algorithm>
#include <cmath>

namespace fastloader {
namespace {

// SplitMix64: small, fast, and good enough to drive augmentation choices.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * double(next() >> 11) * 0x1.0p-53; }
  int below(int n) { return int(double(next() >> 11) * 0x1.0p-53 * n); }  // [0, n)
};

// Python's round(): half to even (the default floating-point rounding mode).
int round_half_even(double x) { return int(std::nearbyint(x)); }

}  // namespace

CropBox sample_resized_crop(int height, int width, double scale_lo, double scale_hi,
                            double ratio_lo, double ratio_hi, uint64_t seed, uint64_t index) {
  SplitMix64 rng{seed ^ (index * 0xD1B54A32D192ED03ull)};
  rng.next();
  const double area = double(height) * width;
  const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(scale_lo, scale_hi);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    const int w = round_half_even(std::sqrt(target_area * aspect));
    const int h = round_half_even(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = rng.below(height - h + 1);
      const int left = rng.below(width - w + 1);
      return {top, left, h, w};
    }
  }
  const double in_ratio = double(width) / height;
  int w = width, h = height;
  if (in_ratio < std::min(ratio_lo, ratio_hi)) {
    h = round_half_even(w / std::min(ratio_lo, ratio_hi));
  } else if (in_ratio > std::max(ratio_lo, ratio_hi)) {
    w = round_half_even(h * std::max(ratio_lo, ratio_hi));
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

}  // namespace fastloader
