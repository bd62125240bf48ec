// Reads the orientation from a JPEG's APP1 payloads (Exif, else XMP) as PIL does. Every
// offset is bounds-checked: the payloads come straight from untrusted files.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace fastloader {

inline bool is_exif_payload(const uint8_t* p, size_t n) { return n >= 6 && std::memcmp(p, "Exif\0\0", 6) == 0; }

constexpr std::string_view kXmpHeader{"http://ns.adobe.com/xap/1.0/\0", 29};

inline bool is_xmp_payload(const uint8_t* p, size_t n) {
  return n >= kXmpHeader.size() && std::memcmp(p, kXmpHeader.data(), kXmpHeader.size()) == 0;
}

// The orientation tag's value in an Exif payload's first IFD, as PIL reads it: the first
// of its values when it holds integers (SHORT, LONG, SSHORT, SLONG), 0 (no orientation,
// but present) for another type; nullopt when absent or malformed.
inline std::optional<int64_t> exif_orientation_tag(const uint8_t* p, size_t n) {
  if (n < 14 || !is_exif_payload(p, n)) return std::nullopt;
  p += 6;
  n -= 6;
  const bool little = p[0] == 'I' && p[1] == 'I';
  if (!little && !(p[0] == 'M' && p[1] == 'M')) return std::nullopt;
  auto u16 = [&](size_t at) -> uint32_t {
    return little ? uint32_t(p[at]) | uint32_t(p[at + 1]) << 8 : uint32_t(p[at]) << 8 | p[at + 1];
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  };
  if (u16(2) != 42) return std::nullopt;
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return std::nullopt;
  const size_t count = u16(ifd);
  for (size_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (entry > n || n - entry < 12) return std::nullopt;
    if (u16(entry) != 0x0112) continue;
    const uint32_t type = u16(entry + 2), values = u32(entry + 4);
    const size_t size = type == 3 || type == 8 ? 2 : type == 4 || type == 9 ? 4 : 0;
    if (size == 0) return 0;  // PIL gets bytes, a string or a fraction: no orientation
    if (values == 0) return std::nullopt;
    size_t at = entry + 8;  // the values themselves when they fit in 4 bytes, else their offset
    if (values > 4 / size) {
      at = u32(entry + 8);
      if (at > n || n - at < size) return std::nullopt;
    }
    switch (type) {
      case 3: return u16(at);
      case 4: return u32(at);
      case 8: return int16_t(u16(at));
      default: return int32_t(u32(at));
    }
  }
  return std::nullopt;
}

// PIL's fallback where Exif has no orientation: the digit after the first
// `tiff:Orientation="` or `tiff:Orientation>` in the XMP packet.
inline std::optional<int64_t> xmp_orientation(const uint8_t* p, size_t n) {
  const std::string_view text(reinterpret_cast<const char*>(p), n);
  constexpr std::string_view tag = "tiff:Orientation";
  for (size_t at = text.find(tag); at != std::string_view::npos; at = text.find(tag, at + 1)) {
    size_t v = at + tag.size();
    if (text.substr(v, 2) == "=\"") v += 2;
    else if (text.substr(v, 1) == ">") v += 1;
    else continue;
    if (v < text.size() && text[v] >= '0' && text[v] <= '9') return text[v] - '0';
  }
  return std::nullopt;
}

}  // namespace fastloader
