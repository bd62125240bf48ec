// Reads the orientation tag from an APP1 Exif payload. Every offset is bounds-checked:
// the payload comes straight from untrusted files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fastloader {

// Returns the EXIF orientation (1..8), or 0 when absent or malformed.
inline int exif_orientation(const uint8_t* p, size_t n) {
  if (n < 14 || std::memcmp(p, "Exif\0\0", 6) != 0) return 0;
  p += 6;
  n -= 6;
  const bool little = p[0] == 'I' && p[1] == 'I';
  if (!little && !(p[0] == 'M' && p[1] == 'M')) return 0;
  auto u16 = [&](size_t at) -> uint32_t {
    return little ? uint32_t(p[at]) | uint32_t(p[at + 1]) << 8 : uint32_t(p[at]) << 8 | p[at + 1];
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  };
  if (u16(2) != 42) return 0;
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return 0;
  const size_t count = u16(ifd);
  for (size_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (entry > n || n - entry < 12) return 0;
    if (u16(entry) != 0x0112) continue;
    if (u16(entry + 2) != 3) return 0;  // orientation is a SHORT
    const uint32_t value = u16(entry + 8);
    return value >= 1 && value <= 8 ? int(value) : 0;
  }
  return 0;
}

}  // namespace fastloader
