// Lossless JPEG rewriting on libjpeg-turbo's transcoding API (as jpegtran). Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "decode.h"

namespace fastloader {

// The JPEG `data` with a restart marker every `mcus` MCUs (1..65535), as `jpegtran -restart
// <mcus>B -copy all` writes it: the same DCT coefficients and so the same pixels, the same
// markers (EXIF, ICC, comments...), baseline sequential Huffman coding with the standard
// tables. A crop of it decodes only the restart intervals it touches (huffman.h). Throws
// JpegError for what decode would refuse (corrupt or truncated data, limits).
std::vector<uint8_t> add_restart_markers(const uint8_t* data, size_t size, int mcus, const DecodeLimits& limits);

}  // namespace fastloader
