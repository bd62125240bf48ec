#include "decode.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <utility>

#include <jerror.h>
#include <jpeglib.h>
#if __has_include(<jpegint.h>)
#include <jpegint.h>  // cinfo->master's crop columns, for decode_planes
#define FASTLOADER_PLANAR_DECODE 1
#endif

#include "exif.h"
#include "huffman.h"
#include "libjpeg_errors.h"

namespace fastloader {
namespace {

// PIL's CMYK -> RGB on Adobe-style inverted CMYK (PIL reads every CMYK JPEG as "CMYK;I").
inline uint8_t muldiv255(int a, int b) {
  int t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

void cmyk_row_to_rgb(const uint8_t* in, int n, uint8_t* out) {
  for (int i = 0; i < n; ++i, in += 4, out += 3) {
    int nk = in[3];  // 255 - (255 - k)
    for (int c = 0; c < 3; ++c) {
      int v = nk - muldiv255(255 - in[c], nk);
      out[c] = static_cast<uint8_t>(v < 0 ? 0 : v);
    }
  }
}

// PIL-SIMD's RGB -> L (ITU-R 601-2 luma in 15-bit fixed point; plain Pillow uses 16 bits
// and differs in about 0.1% of pixels by one level).
void rgb_row_to_gray(const uint8_t* in, int n, uint8_t* out) {
  for (int i = 0; i < n; ++i, in += 3)
    out[i] = static_cast<uint8_t>((in[0] * 9798 + in[1] * 19235 + in[2] * 3735 + 0x4000) >> 15);
}

std::atomic<bool> own_entropy_decoder{true};

// The MCU columns [first, last] that libjpeg IDCTs for a crop_scanline'd decode
// (jpeg_crop_scanline's own arithmetic).
std::pair<int, int> decoded_mcu_cols(const jpeg_decompress_struct& cinfo, JDIMENSION xoff,
                                     JDIMENSION width) {
#if JPEG_LIB_VERSION >= 70
  const int block = cinfo.min_DCT_h_scaled_size;
#else
  const int block = cinfo.min_DCT_scaled_size;
#endif
  const bool single = cinfo.comps_in_scan == 1 && cinfo.num_components == 1;
  const int align = single ? block : block * cinfo.max_h_samp_factor;
  return {int(xoff) / align, int((xoff + width + align - 1) / align) - 1};
}

// The first MCU row a decode that skips `skipped` output rows (jpeg_skip_scanlines) asks
// blocks of: the one holding the first row kept, or the one above it, which libjpeg may
// read again as context for upsampling.
int first_decoded_mcu_row(const jpeg_decompress_struct& cinfo, int skipped) {
#if JPEG_LIB_VERSION >= 70
  const int block = cinfo.min_DCT_v_scaled_size;
#else
  const int block = cinfo.min_DCT_scaled_size;
#endif
  const bool single = cinfo.comps_in_scan == 1 && cinfo.num_components == 1;
  const int mcu_h = single ? block : block * cinfo.max_v_samp_factor;
  return std::max(0, skipped / mcu_h - 1);
}

}  // namespace

void use_own_entropy_decoder(bool on) { own_entropy_decoder = on; }

struct JpegDecoder::State {
  jpeg_decompress_struct cinfo{};
  EntropyDecoder entropy;
  ErrorManager err{};
  ProgressManager progress{};
  JpegInfo info;
  bool opened = false;
};

// Runs f with libjpeg's errors caught; f must not own objects with destructors, since
// an error longjmps out of it.
template <class F>
static void guarded(jpeg_decompress_struct& cinfo, ErrorManager& err, F&& f) {
  if (setjmp(err.jump)) {
    jpeg_abort_decompress(&cinfo);
    throw JpegError(err.message);
  }
  f();
}

JpegDecoder::JpegDecoder() : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.cinfo.err = init_error_manager(s.err);
  if (setjmp(s.err.jump)) throw JpegError(s.err.message);
  jpeg_create_decompress(&s.cinfo);
  s.progress.pub.progress_monitor = on_progress;
  s.cinfo.progress = &s.progress.pub;
}

JpegDecoder::~JpegDecoder() { jpeg_destroy_decompress(&state_->cinfo); }

JpegInfo JpegDecoder::open(const uint8_t* data, size_t size, bool read_orientation,
                           const DecodeLimits& limits) {
  State& s = *state_;
  s.opened = false;
  if (size == 0) throw JpegError("empty input");
  if (!looks_like_jpeg(data, size)) throw JpegError("not a JPEG (no SOI marker)");
  s.progress.max_scans = limits.max_scans;
  s.err.pub.num_warnings = 0;
  jpeg_decompress_struct& cinfo = s.cinfo;
  guarded(cinfo, s.err, [&] {
    jpeg_abort_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, read_orientation ? 0xFFFF : 0);
    jpeg_read_header(&cinfo, TRUE);
  });
  JpegInfo info;
  info.width = static_cast<int>(cinfo.image_width);
  info.height = static_cast<int>(cinfo.image_height);
  if (info.width <= 0 || info.height <= 0) throw JpegError("image has no pixels");
  if (int64_t(info.width) * info.height > limits.max_pixels)
    throw JpegError("image of " + std::to_string(info.width) + "x" + std::to_string(info.height) +
                    " pixels exceeds max_pixels=" + std::to_string(limits.max_pixels));
  if (read_orientation) {
    // As PIL: the first Exif segment's tag, else the last XMP packet's; 1..8 or nothing.
    bool seen_exif = false;
    std::optional<int64_t> exif, xmp;
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
      if (m->marker != JPEG_APP0 + 1) continue;
      if (!seen_exif && is_exif_payload(m->data, m->data_length)) {
        seen_exif = true;
        exif = exif_orientation_tag(m->data, m->data_length);
      } else if (is_xmp_payload(m->data, m->data_length)) {
        const size_t skip = kXmpHeader.size();
        xmp = xmp_orientation(m->data + skip, m->data_length - skip);
      }
    }
    const std::optional<int64_t> o = exif ? exif : xmp;
    if (o && *o >= 1 && *o <= 8) info.orientation = int(*o);
  }
  s.info = info;
  s.opened = true;
  return info;
}

PixelView JpegDecoder::decode(ColorMode mode, int scale_num, Rect roi, const Allocator& allocate,
                              bool fast_idct) {
  State& s = *state_;
  if (!s.opened) throw JpegError("decode() without a successful open()");
  s.opened = false;
  if (scale_num < 1 || scale_num > 8) throw JpegError("scale must be k/8 with k in 1..8");
  const int full_w = scaled_dim(s.info.width, scale_num);
  const int full_h = scaled_dim(s.info.height, scale_num);
  if (roi.w <= 0 || roi.h <= 0 || roi.x < 0 || roi.y < 0 || roi.x + roi.w > full_w ||
      roi.y + roi.h > full_h)
    throw JpegError("region of interest outside the image");

  jpeg_decompress_struct& cinfo = s.cinfo;
  const J_COLOR_SPACE in_space = cinfo.jpeg_color_space;
  const bool cmyk = in_space == JCS_CMYK || in_space == JCS_YCCK;
  const bool gray_native = mode == ColorMode::Gray && in_space == JCS_GRAYSCALE;
  const int out_c = channels_of(mode);
  const int dec_c = cmyk ? 4 : (gray_native ? 1 : 3);
  // Decode a couple of columns beyond the ROI: at the edge of a cropped decode, chroma
  // upsampling lacks its neighbour, so the outermost columns differ from a full decode.
  const int margin = 2;
  const int want_x0 = std::max(0, roi.x - margin);
  const int want_x1 = std::min(full_w, roi.x + roi.w + margin);
  PixelView view;

  guarded(cinfo, s.err, [&] {
    cinfo.scale_num = static_cast<unsigned>(scale_num);
    cinfo.scale_denom = 8;
    cinfo.dct_method = fast_idct ? JDCT_IFAST : JDCT_ISLOW;
    cinfo.out_color_space = cmyk ? JCS_CMYK : (gray_native ? JCS_GRAYSCALE : JCS_EXT_RGB);
    jpeg_start_decompress(&cinfo);
    JDIMENSION xoff = static_cast<JDIMENSION>(want_x0);
    JDIMENSION width = static_cast<JDIMENSION>(want_x1 - want_x0);
    const bool cropped = xoff != 0 || width != cinfo.output_width;
    if (cropped) jpeg_crop_scanline(&cinfo, &xoff, &width);
    if (own_entropy_decoder) {
      const auto cols = cropped ? decoded_mcu_cols(cinfo, xoff, width) : std::pair{0, INT_MAX};
      s.entropy.install(&cinfo, cols.first, cols.second, first_decoded_mcu_row(cinfo, roi.y));
    }
    // Rows land straight in the caller's memory, whole decoded width; conversions to
    // fewer channels run in place at the start of each row.
    view.stride = size_t(width) * dec_c;
    uint8_t* rows = allocate(view.stride * roi.h);
    view.data = rows + (size_t(roi.x) - xoff) * out_c;
    if (roi.y > 0) jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(roi.y));
    for (int y = 0; y < roi.h; ++y) {
      JSAMPROW row = rows + size_t(y) * view.stride;
      if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
        std::snprintf(s.err.message, sizeof(s.err.message), "decoder returned no row");
        std::longjmp(s.err.jump, 1);
      }
      const int n = static_cast<int>(width);
      if (cmyk && out_c == 3) {
        cmyk_row_to_rgb(row, n, row);
      } else if (cmyk) {
        // CMYK -> RGB -> L, as PIL's convert("L") after its CMYK->RGB step.
        uint8_t rgb[3 * 64];
        for (int x0 = 0; x0 < n; x0 += 64) {
          const int m = std::min(64, n - x0);
          cmyk_row_to_rgb(row + size_t(x0) * 4, m, rgb);
          rgb_row_to_gray(rgb, m, row + x0);
        }
      } else if (dec_c == 3 && out_c == 1) {
        rgb_row_to_gray(row, n, row);
      }
    }
    jpeg_abort_decompress(&cinfo);
  });
  return view;
}

std::optional<JpegDecoder::ChromaSubsampling> JpegDecoder::planar_subsampling() const {
#if defined(FASTLOADER_PLANAR_DECODE) && defined(LIBJPEG_TURBO_VERSION_NUMBER)
  const State& s = *state_;
  const jpeg_decompress_struct& c = s.cinfo;
  // Huffman-coded only: decode_planes passes over the rows above the crop with
  // decode_mcu(NULL), which ours and libjpeg-turbo's Huffman decoder accept.
  if (!s.opened || c.jpeg_color_space != JCS_YCbCr || c.num_components != 3 || c.progressive_mode ||
      c.arith_code || c.comps_in_scan != 3 || c.CCIR601_sampling)
    return std::nullopt;
  const jpeg_component_info* comp = c.comp_info;
  const int hs = comp[0].h_samp_factor, vs = comp[0].v_samp_factor;
  if (hs < 1 || hs > 2 || vs < 1 || vs > 2) return std::nullopt;
  for (int ci = 1; ci < 3; ++ci)
    if (comp[ci].h_samp_factor != 1 || comp[ci].v_samp_factor != 1) return std::nullopt;
  return ChromaSubsampling{hs, vs};
#else
  return std::nullopt;
#endif
}

JpegDecoder::Planes JpegDecoder::decode_planes(Rect need, const Allocator& allocate, bool fast_idct) {
  Planes planes;
#if defined(FASTLOADER_PLANAR_DECODE) && defined(LIBJPEG_TURBO_VERSION_NUMBER)
  State& s = *state_;
  const std::optional<ChromaSubsampling> sub = planar_subsampling();
  if (!sub) throw JpegError("decode_planes() needs a YCbCr sequential JPEG after open()");
  s.opened = false;
  if (need.w <= 0 || need.h <= 0 || need.x < 0 || need.y < 0 || need.x + need.w > s.info.width ||
      need.y + need.h > s.info.height)
    throw JpegError("region of interest outside the image");
  jpeg_decompress_struct& cinfo = s.cinfo;
  guarded(cinfo, s.err, [&] {
    cinfo.scale_num = cinfo.scale_denom = 1;
    cinfo.dct_method = fast_idct ? JDCT_IFAST : JDCT_ISLOW;
    cinfo.raw_data_out = TRUE;
    jpeg_start_decompress(&cinfo);
    // Whole MCUs: mcu_w x mcu_h luma pixels, DCTSIZE x DCTSIZE chroma pixels.
    const int mcu_w = DCTSIZE * sub->x, mcu_h = DCTSIZE * sub->y;
    const int c0 = need.x / mcu_w, c1 = (need.x + need.w - 1) / mcu_w;
    const int r0 = need.y / mcu_h, r1 = (need.y + need.h - 1) / mcu_h;
    // MCU rows above: their coefficients passed over, no IDCT (as jpeg_skip_scanlines
    // does, which raw data output does not offer); MCU columns beside: no IDCT either.
    if (own_entropy_decoder) s.entropy.install(&cinfo, c0, c1, r0);
    for (int i = 0; i < r0 * int(cinfo.MCUs_per_row); ++i) (*cinfo.entropy->decode_mcu)(&cinfo, nullptr);
    cinfo.input_iMCU_row = cinfo.output_iMCU_row = JDIMENSION(r0);
    cinfo.output_scanline = JDIMENSION(r0 * mcu_h);
    cinfo.master->first_iMCU_col = JDIMENSION(c0);
    cinfo.master->last_iMCU_col = JDIMENSION(c1);

    const int cols = c1 - c0 + 1, rows = r1 - r0 + 1;
    const size_t y_stride = size_t(cols) * mcu_w, c_stride = size_t(cols) * DCTSIZE;
    const size_t y_bytes = y_stride * rows * mcu_h, c_bytes = c_stride * rows * DCTSIZE;
    uint8_t* buffer = allocate(y_bytes + 2 * c_bytes);
    const size_t strides[3] = {y_stride, c_stride, c_stride};
    uint8_t* starts[3] = {buffer, buffer + y_bytes, buffer + y_bytes + c_bytes};
    for (int c = 0; c < 3; ++c) {
      planes.data[c] = starts[c];
      planes.stride[c] = strides[c];
      planes.x0[c] = c0 * (c ? DCTSIZE : mcu_w);
      planes.y0[c] = r0 * (c ? DCTSIZE : mcu_h);
    }
    JSAMPROW y_rows[2 * DCTSIZE], cb_rows[DCTSIZE], cr_rows[DCTSIZE];
    JSAMPARRAY image[3] = {y_rows, cb_rows, cr_rows};
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < mcu_h; ++i) y_rows[i] = starts[0] + (size_t(r) * mcu_h + i) * y_stride;
      for (int i = 0; i < DCTSIZE; ++i) {
        cb_rows[i] = starts[1] + (size_t(r) * DCTSIZE + i) * c_stride;
        cr_rows[i] = starts[2] + (size_t(r) * DCTSIZE + i) * c_stride;
      }
      if (jpeg_read_raw_data(&cinfo, image, JDIMENSION(mcu_h)) != JDIMENSION(mcu_h)) {
        std::snprintf(s.err.message, sizeof(s.err.message), "decoder returned no rows");
        std::longjmp(s.err.jump, 1);
      }
    }
    jpeg_abort_decompress(&cinfo);
  });
#else
  (void)need, (void)allocate, (void)fast_idct;
  throw JpegError("decode_planes() is not available: built without libjpeg-turbo's jpegint.h");
#endif
  return planes;
}

JpegDecoder& thread_decoder() {
  thread_local JpegDecoder decoder;
  return decoder;
}

Rect unorient_rect(Rect r, int w, int h, int o) {
  switch (o) {
    case 2: return {w - r.x - r.w, r.y, r.w, r.h};
    case 3: return {w - r.x - r.w, h - r.y - r.h, r.w, r.h};
    case 4: return {r.x, h - r.y - r.h, r.w, r.h};
    case 5: return {r.y, r.x, r.h, r.w};
    case 6: return {r.y, h - r.x - r.w, r.h, r.w};
    case 7: return {w - r.y - r.h, h - r.x - r.w, r.h, r.w};
    case 8: return {w - r.y - r.h, r.x, r.h, r.w};
    default: return r;
  }
}

void orient_image(const uint8_t* src, size_t src_stride, int w, int h, int c, int o,
                  uint8_t* dst) {
  const bool swap = orientation_swaps_axes(o);
  const int ow = swap ? h : w, oh = swap ? w : h;
  for (int oy = 0; oy < oh; ++oy) {
    uint8_t* out = dst + size_t(oy) * ow * c;
    for (int ox = 0; ox < ow; ++ox, out += c) {
      int sx, sy;
      switch (o) {
        case 2: sx = w - 1 - ox; sy = oy; break;
        case 3: sx = w - 1 - ox; sy = h - 1 - oy; break;
        case 4: sx = ox; sy = h - 1 - oy; break;
        case 5: sx = oy; sy = ox; break;
        case 6: sx = oy; sy = h - 1 - ox; break;
        case 7: sx = w - 1 - oy; sy = h - 1 - ox; break;
        case 8: sx = w - 1 - oy; sy = ox; break;
        default: sx = ox; sy = oy; break;
      }
      std::memcpy(out, src + size_t(sy) * src_stride + size_t(sx) * c, c);
    }
  }
}

}  // namespace fastloader
