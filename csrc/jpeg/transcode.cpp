#include "transcode.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "libjpeg_errors.h"

namespace fastloader {
namespace {

// Markers libjpeg writes itself from the parameters jpeg_copy_critical_parameters copies:
// copying them too would write them twice (jpegtran skips them alike).
bool written_by_libjpeg(const jpeg_compress_struct& dst, const jpeg_marker_struct& m) {
  const auto starts = [&](const char* tag, size_t n) {
    return m.data_length >= n && std::memcmp(m.data, tag, n) == 0;
  };
  return (dst.write_JFIF_header && m.marker == JPEG_APP0 && starts("JFIF\0", 5)) ||
         (dst.write_Adobe_marker && m.marker == JPEG_APP0 + 14 && starts("Adobe", 5));
}

// libjpeg state that a longjmp out of the transcoding leaves behind.
struct Transcoder {
  jpeg_decompress_struct src{};
  jpeg_compress_struct dst{};
  ErrorManager err{};
  ProgressManager progress{};
  unsigned char* out = nullptr;  // jpeg_mem_dest's buffer (malloc'd by libjpeg)
  unsigned long out_size = 0;

  Transcoder() {
    src.err = init_error_manager(err);
    dst.err = &err.pub;
  }
  ~Transcoder() {
    jpeg_destroy_compress(&dst);
    jpeg_destroy_decompress(&src);
    std::free(out);
  }
};

// Whether every coefficient fits baseline Huffman coding: DC within [-1024, 1023] (so that
// the difference of two fits 11 bits; -1024 is a black block at quantizer 1), AC within
// +-1023 (10 bits). Data decoded from a valid 8-bit JPEG always does; damaged data can sum
// DC differences past it, and libjpeg-turbo's SIMD encoder would then write codes that do
// not exist, a broken file.
bool fits_baseline(j_decompress_ptr src, jvirt_barray_ptr* coefficients) {
  for (int ci = 0; ci < src->num_components; ++ci) {
    const jpeg_component_info& comp = src->comp_info[ci];
    for (JDIMENSION row = 0; row < comp.height_in_blocks; ++row) {
      JBLOCKARRAY blocks = (*src->mem->access_virt_barray)(reinterpret_cast<j_common_ptr>(src), coefficients[ci],
                                                            row, 1, FALSE);
      bool ok = true;
      for (JDIMENSION b = 0; b < comp.width_in_blocks; ++b) {
        const JCOEF* c = blocks[0][b];
        ok &= c[0] >= -1024 && c[0] <= 1023;
        for (int i = 1; i < DCTSIZE2; ++i) ok &= c[i] >= -1023 && c[i] <= 1023;
      }
      if (!ok) return false;
    }
  }
  return true;
}

}  // namespace

std::vector<uint8_t> add_restart_markers(const uint8_t* data, size_t size, int mcus, const DecodeLimits& limits) {
  if (mcus < 1 || mcus > 65535) throw JpegError("restart interval must be 1..65535 MCUs, got " + std::to_string(mcus));
  if (size == 0) throw JpegError("empty input");
  if (!looks_like_jpeg(data, size)) throw JpegError("not a JPEG (no SOI marker)");
  // libjpeg-turbo's own entropy decoder, which the transcoding reads with, takes some
  // invalid Huffman codes for zeros without a word: a corrupt file would come out valid,
  // its damage baked in. A 1/8-scale decode (entropy decoding, and a DC-only IDCT) on ours
  // rejects it first, with decode_jpeg's message.
  JpegDecoder& check = thread_decoder();
  const JpegInfo info = check.open(data, size, false, limits);
  std::vector<uint8_t> scratch;
  check.decode(ColorMode::Gray, 1, Rect{0, 0, scaled_dim(info.width, 1), scaled_dim(info.height, 1)},
               [&](size_t bytes) {
                 scratch.resize(bytes);
                 return scratch.data();
               });
  Transcoder t;
  // Everything from here may longjmp back: no objects with destructors in between.
  if (setjmp(t.err.jump)) throw JpegError(t.err.message);
  jpeg_create_decompress(&t.src);
  jpeg_create_compress(&t.dst);
  t.progress.pub.progress_monitor = on_progress;
  t.progress.max_scans = limits.max_scans;
  t.src.progress = &t.progress.pub;
  jpeg_mem_src(&t.src, data, static_cast<unsigned long>(size));
  for (int m = 0; m < 16; ++m) jpeg_save_markers(&t.src, JPEG_APP0 + m, 0xFFFF);
  jpeg_save_markers(&t.src, JPEG_COM, 0xFFFF);
  jpeg_read_header(&t.src, TRUE);  // its size already checked against the limits by check.open()
  jvirt_barray_ptr* coefficients = jpeg_read_coefficients(&t.src);
  if (!fits_baseline(&t.src, coefficients)) {
    std::snprintf(t.err.message, sizeof(t.err.message), "corrupt JPEG data: DCT coefficients out of range");
    std::longjmp(t.err.jump, 1);
  }
  jpeg_copy_critical_parameters(&t.src, &t.dst);  // also the standard Huffman tables
  t.dst.restart_interval = static_cast<unsigned>(mcus);
  jpeg_mem_dest(&t.dst, &t.out, &t.out_size);
  jpeg_write_coefficients(&t.dst, coefficients);
  for (jpeg_saved_marker_ptr m = t.src.marker_list; m; m = m->next)
    if (!written_by_libjpeg(t.dst, *m)) jpeg_write_marker(&t.dst, m->marker, m->data, m->data_length);
  jpeg_finish_compress(&t.dst);
  jpeg_finish_decompress(&t.src);
  return std::vector<uint8_t>(t.out, t.out + t.out_size);
}

}  // namespace fastloader
