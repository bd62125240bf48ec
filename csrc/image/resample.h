// Antialiased bilinear resampling with PIL's filter (a triangle widened by the downscale
// factor, fixed-point coefficients, uint8 between the two passes). Like PIL-SIMD we use
// 14-bit coefficients so SIMD multiplies two taps at once, and we run the costly
// horizontal pass on whichever of source and output has fewer rows: results stay within
// a level or so of PIL's. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastloader {

// Filter taps of one axis, for the outputs [out_offset, out_offset + out_count) of a
// resize of the source span [in0, in1) to out_size pixels. Taps never leave
// [clip0, clip1); outputs outside [0, out_size) get no taps (padding, value 0).
struct ResampleAxis {
  int ksize = 0;
  std::vector<int> first;       // first source index of each output
  std::vector<int> taps;        // number of taps of each output
  std::vector<int16_t> coeffs;  // out_count x ksize, fixed point
  int src_lo = 0, src_hi = 0;   // source range any output uses (empty when lo == hi)

  void build(double in0, double in1, int clip0, int clip1, int out_size, int out_offset,
             int out_count);
  // Makes `first` relative to a buffer that starts at source index `origin`.
  void rebase(int origin);
  int out_count() const { return static_cast<int>(first.size()); }
};

// Resamples src (rows src_stride bytes apart, `channels` interleaved, covering the source
// ranges of both axes, 8 readable bytes past the last pixel) into dst (ax.out_count() x
// ay.out_count() x channels, packed, plus 4 writable spare bytes).
// tmp is scratch that keeps its capacity between calls.
void resample_u8(const uint8_t* src, size_t src_stride, int channels, const ResampleAxis& ax,
                 const ResampleAxis& ay, uint8_t* dst, std::vector<uint8_t>& tmp);

// resample_u8 for one channel, dst packed (no spare bytes needed, nor read past src).
void resample_plane(const uint8_t* src, size_t src_stride, const ResampleAxis& ax,
                    const ResampleAxis& ay, uint8_t* dst, std::vector<uint8_t>& tmp);

}  // namespace fastloader
