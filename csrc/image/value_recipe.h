// The float32 value of a uint8 level v on one channel, computed as the value table's own
// steps compute it: (v * multiplier - mean) / std. The division is the slow step of the
// float write; where the reciprocal of std and one Newton step (two FMAs) give the same
// quotient for all 256 levels, checked once per batch, the kernels use those instead.
#pragma once
#include <cmath>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

#if defined(__AVX2__)
  __m256 operator()(__m256 v) const {
    const __m256 t = _mm256_sub_ps(_mm256_mul_ps(v, _mm256_set1_ps(multiplier)), _mm256_set1_ps(mean));
#if defined(__FMA__)
    if (inverse != 0) {
      const __m256 inv = _mm256_set1_ps(inverse);
      const __m256 q = _mm256_mul_ps(t, inv);
      return _mm256_fmadd_ps(_mm256_fnmadd_ps(q, _mm256_set1_ps(stdev), t), inv, q);
    }
#endif
    return _mm256_div_ps(t, _mm256_set1_ps(stdev));
  }
#endif
};

}  // namespace fastloader
