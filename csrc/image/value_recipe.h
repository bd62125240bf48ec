// The float32 value of a uint8 level v on one channel, computed as the value table's own
// steps compute it: (v * multiplier - mean) / std. The division is the slow step of the
// float write; where the reciprocal of std and one Newton step (two FMAs) give the same
// quotient for all 256 levels, checked once per batch, the kernels use those instead.
#pragma once
#include <cmath>
#include <cstring>

#include "simd_float.h"

namespace fastloader {

struct ValueRecipe {
  float multiplier = 1, mean = 0, stdev = 1;
  float inverse = 0;  // 1 / stdev where it gives every level's quotient exactly; 0: divide

  float quotient(float t, float inv) const {
    const float q = t * inv;
    return std::fma(std::fma(-q, stdev, t), inv, q);
  }

  // The steps as given, with the reciprocal when it is exact for every level.
  static ValueRecipe of(float multiplier, float mean, float stdev) {
    ValueRecipe r{multiplier, mean, stdev, 0.0f};
    const float inv = 1.0f / stdev;
    for (int v = 0; v < 256; ++v) {
      const float t = float(v) * multiplier - mean;
      const float exact = t / stdev, fast = r.quotient(t, inv);
      if (std::memcmp(&exact, &fast, sizeof(float)) != 0) return r;
    }
    r.inverse = inv;
    return r;
  }

  float operator()(float v) const {
    const float t = v * multiplier - mean;
    return inverse != 0 ? quotient(t, inverse) : t / stdev;
  }
};

#if defined(__AVX2__)
// The values of S::kLanes levels of channel c (S: simd_float.h's F8 or F16), the
// constants held for a whole loop: float stores in a kernel's loop could alias a
// ValueRecipe in memory, so a kernel reading one there reloads and retests it for every
// vector of pixels.
struct GatheredValues {  // from the value table (channels x 256)
  const float* table;
  template <class S>
  typename S::V apply(int c, typename S::V levels) const {
    return S::gather(table + 256 * c, levels);
  }
};

template <bool kInverse>
struct ComputedValues {  // by the channels' recipes; kInverse: all use the reciprocal
  float multiplier[3] = {}, mean[3] = {}, stdev[3] = {}, inverse[3] = {};

  ComputedValues(const ValueRecipe* recipe, int channels) {
    for (int c = 0; c < channels; ++c) {
      multiplier[c] = recipe[c].multiplier;
      mean[c] = recipe[c].mean;
      stdev[c] = recipe[c].stdev;
      inverse[c] = recipe[c].inverse;
    }
  }

  template <class S>
  typename S::V apply(int c, typename S::V levels) const {
    const auto t = S::sub(S::mul(levels, S::set1(multiplier[c])), S::set1(mean[c]));
    if constexpr (kInverse) {
      const auto inv = S::set1(inverse[c]);
      const auto q = S::mul(t, inv);
      return S::fmadd(S::fnmadd(q, S::set1(stdev[c]), t), inv, q);
    } else {
      return S::div(t, S::set1(stdev[c]));
    }
  }
};

// Calls kernel(values) with the values functor that fits: computed where `recipe` is
// given (the table's own steps, checked against it), else gathered from `table`.
template <class Kernel>
void with_values(const ValueRecipe* recipe, const float* table, int channels, Kernel&& kernel) {
  if (!recipe) return kernel(GatheredValues{table});
#if defined(__FMA__)
  bool inverse = true;
  for (int c = 0; c < channels; ++c) inverse = inverse && recipe[c].inverse != 0;
  if (inverse) return kernel(ComputedValues<true>(recipe, channels));
#endif
  kernel(ComputedValues<false>(recipe, channels));
}
#endif

}  // namespace fastloader
