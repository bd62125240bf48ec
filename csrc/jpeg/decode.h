// JPEG decoding on libjpeg-turbo's libjpeg API: header probe, DCT-domain scaling (M/8),
// decode of a region of interest, EXIF orientation. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastloader {

// Any failure to read a JPEG: corrupt or truncated data, limits exceeded, bad arguments.
struct JpegError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class ColorMode { RGB = 0, Gray = 1 };

inline int channels_of(ColorMode mode) { return mode == ColorMode::RGB ? 3 : 1; }

struct JpegInfo {
  int width = 0;   // as stored, before EXIF orientation
  int height = 0;
  int orientation = 1;  // EXIF orientation 1..8 (1 when absent or not asked for)
};

struct DecodeLimits {
  int64_t max_pixels = 178956970;  // PIL's decompression-bomb error threshold
  int max_scans = 500;             // a hostile progressive file can carry millions of scans
};

// Rectangle in pixels, [x, x + w) x [y, y + h).
struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

// Decoded pixels: rows `stride` bytes apart.
struct PixelView {
  const uint8_t* data = nullptr;
  size_t stride = 0;
};

// Width or height of an image of `size` pixels decoded at scale num/8 (libjpeg's rule).
inline int scaled_dim(int size, int num) { return static_cast<int>((int64_t(size) * num + 7) / 8); }

// One decoder per thread, reused across images (libjpeg's state is not thread-safe).
class JpegDecoder {
 public:
  JpegDecoder();
  ~JpegDecoder();
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  // Reads the header (and the EXIF orientation when asked); checks the limits.
  JpegInfo open(const uint8_t* data, size_t size, bool read_orientation, const DecodeLimits& limits);

  // Decodes `roi` (in the coordinates of the image scaled by scale_num/8, before EXIF
  // orientation) into memory it gets from allocate(bytes), and returns where the ROI's
  // pixels are: rows can be wider than the ROI, since libjpeg decodes whole iMCU columns.
  // open() must come first; each open() allows one decode(). fast_idct trades about a
  // level of accuracy for speed (JDCT_IFAST); the default matches PIL bit for bit.
  using Allocator = std::function<uint8_t*(size_t bytes)>;
  PixelView decode(ColorMode mode, int scale_num, Rect roi, const Allocator& allocate,
                   bool fast_idct = false);

  // YCbCr planes as stored, for a 3-component sequential JPEG at full scale: chroma at
  // its own resolution, no upsampling, no colour conversion. After open(): the chroma
  // subsampling, or nothing when the image is not such a JPEG (decode() takes it then).
  struct ChromaSubsampling {
    int x = 1, y = 1;  // luma pixels per chroma pixel across / down (1 or 2)
  };
  std::optional<ChromaSubsampling> planar_subsampling() const;

  // Decodes the whole MCUs covering `need` (luma pixels) into memory from allocate();
  // plane c's buffer holds its pixels from plane pixel (x0[c], y0[c]) on, rows stride[c]
  // bytes apart (pixels past the image's right and bottom edges are undefined). Like
  // decode(), consumes the open().
  struct Planes {
    const uint8_t* data[3] = {};
    size_t stride[3] = {};
    int x0[3] = {}, y0[3] = {};
  };
  Planes decode_planes(Rect need, const Allocator& allocate, bool fast_idct = false);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Whether decoders use fastloader's entropy decoder (jpeg/huffman.h, the default) for the
// scans it handles, or libjpeg-turbo's throughout: both give the same coefficients, and
// tests compare them.
void use_own_entropy_decoder(bool on);

// The decoder of the calling thread.
JpegDecoder& thread_decoder();

// True when the bytes start like a JPEG (SOI marker).
inline bool looks_like_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

// EXIF orientation helpers (values 1..8 as in the EXIF spec and PIL's exif_transpose).
inline bool orientation_swaps_axes(int orientation) { return orientation >= 5 && orientation <= 8; }
// Whether the oriented image's x (y) axis runs against the stored axis it comes from.
inline bool orientation_reverses_x(int o) { return o == 2 || o == 3 || o == 6 || o == 7; }
inline bool orientation_reverses_y(int o) { return o == 3 || o == 4 || o == 7 || o == 8; }

// Maps a rectangle of the oriented image back to the stored image of size (w, h).
Rect unorient_rect(Rect r, int w, int h, int orientation);

// Writes the stored image src (w x h x c, rows src_stride bytes apart) oriented into dst
// (packed, its size swapped for 5..8).
void orient_image(const uint8_t* src, size_t src_stride, int w, int h, int c, int orientation,
                  uint8_t* dst);

}  // namespace fastloader
