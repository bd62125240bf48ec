// float32 vectors of 8 (AVX2) or 16 (AVX-512) lanes behind one set of names, so a kernel
// is written once and compiled for both widths: the AVX-512 one where the build machine
// has it (its 512-bit units do twice the work per instruction), the AVX2 one for the rest
// of a row. Every operation rounds as its scalar counterpart does.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastloader::simd {

#if defined(__AVX2__)
struct F8 {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
#if defined(__FMA__)
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
#endif
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 8 bytes as floats, in reverse order when `reverse`.
  static V load_u8(const uint8_t* p, bool reverse) {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    if (reverse) v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0));
    return _mm256_cvtepi32_ps(v);
  }
  // table[v] for each (integral) v.
  static V gather(const float* table, V v) { return _mm256_i32gather_ps(table, _mm256_cvtps_epi32(v), 4); }
  // Non-temporal where p is aligned to the vector: a batch is far larger than the caches.
  static void store(float* p, V v) {
    if ((reinterpret_cast<uintptr_t>(p) & 31) == 0)
      _mm256_stream_ps(p, v);
    else
      _mm256_storeu_ps(p, v);
  }
};
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
// GCC 12's AVX-512 intrinsics start some results from an "undefined" value that its own
// -Wmaybe-uninitialized then reports (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct F16 {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V load_u8(const uint8_t* p, bool reverse) {
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if (reverse)
      v = _mm512_permutexvar_epi32(_mm512_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), v);
    return _mm512_cvtepi32_ps(v);
  }
  static V gather(const float* table, V v) { return _mm512_i32gather_ps(_mm512_cvtps_epi32(v), table, 4); }
  static void store(float* p, V v) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0)
      _mm512_stream_ps(p, v);
    else
      _mm512_storeu_ps(p, v);
  }
};
#pragma GCC diagnostic pop
#endif

}  // namespace fastloader::simd
