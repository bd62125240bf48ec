// libjpeg's error handling for fastloader: errors, and the warnings that mean pixels were
// lost or invented, longjmp back to the caller's setjmp with a message; nothing is printed.
// Shared by the decoder and the transcoder. Torch-free.
#pragma once
#include <csetjmp>
#include <cstdio>

#include <jerror.h>
#include <jpeglib.h>

namespace fastloader {

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64];
};

struct ProgressManager {
  jpeg_progress_mgr pub;
  int max_scans;
};

[[noreturn]] inline void jump_with(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  std::longjmp(err->jump, 1);
}

inline void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  jump_with(cinfo);
}

// Warnings that mean pixels were lost or invented. libjpeg decodes on (gray fill,
// garbage), which would feed silent noise to training: we fail the sample instead.
// Harmless ones (extraneous bytes between markers, unknown JFIF revision) pass.
inline bool loses_data(int code) {
  switch (code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
#ifdef JWRN_ARITH_BAD_CODE
    case JWRN_ARITH_BAD_CODE:
#endif
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
    case JWRN_BOGUS_PROGRESSION:
      return true;
    default:
      return false;
  }
}

inline void on_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;  // trace output
  if (loses_data(cinfo->err->msg_code)) on_error_exit(cinfo);
  cinfo->err->num_warnings++;
}

inline void on_output_message(j_common_ptr) {}  // never print to stderr

inline void on_progress(j_common_ptr cinfo) {
  auto* progress = reinterpret_cast<ProgressManager*>(cinfo->progress);
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (dinfo->input_scan_number > progress->max_scans) {
    auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d scans (progressive scan limit)",
                  progress->max_scans);
    jump_with(cinfo);
  }
}

// Sets up `e` (error_exit, emit_message, output_message as above); returns its jpeg_error_mgr
// for cinfo->err.
inline jpeg_error_mgr* init_error_manager(ErrorManager& e) {
  jpeg_std_error(&e.pub);
  e.pub.error_exit = on_error_exit;
  e.pub.emit_message = on_emit_message;
  e.pub.output_message = on_output_message;
  return &e.pub;
}

}  // namespace fastloader
