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

// Bytes per value of each TIFF field type PIL reads (0: a type PIL does not know).
inline size_t tiff_type_size(uint32_t type) {
  switch (type) {
    case 1: case 2: case 6: case 7: return 1;  // BYTE, ASCII, SBYTE, UNDEFINED
    case 3: case 8: return 2;                  // SHORT, SSHORT
    case 4: case 9: case 11: case 13: return 4;  // LONG, SLONG, FLOAT, IFD
    case 5: case 10: case 12: case 16: return 8;  // RATIONAL, SRATIONAL, DOUBLE, LONG8
    default: return 0;
  }
}

// The orientation tag's value in an Exif payload's first IFD, as PIL reads it: its first
// value when that is a whole number (an integer type, a rational or a float), 0 (present,
// but no orientation) for bytes, text or a fraction; nullopt when absent, of a type PIL
// skips, or malformed.
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
  auto u64 = [&](size_t at) -> uint64_t {
    return little ? u32(at) | uint64_t(u32(at + 4)) << 32 : uint64_t(u32(at)) << 32 | u32(at + 4);
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
    const size_t size = tiff_type_size(type);
    if (size == 0 || values == 0) return std::nullopt;
    size_t at = entry + 8;  // the values themselves when they fit in 4 bytes, else their offset
    if (uint64_t(values) * size > 4) {
      at = u32(entry + 8);
      if (at > n || (n - at) / size < values) return std::nullopt;  // cut short: PIL skips the tag
    }
    auto whole = [](double v) -> int64_t {  // a float or fraction that is a whole number
      return v == v && v >= -1e9 && v <= 1e9 && v == double(int64_t(v)) ? int64_t(v) : 0;
    };
    switch (type) {
      case 3: return u16(at);
      case 4: case 13: return u32(at);
      case 6: return int8_t(p[at]);
      case 8: return int16_t(u16(at));
      case 9: return int32_t(u32(at));
      case 16: return u64(at) > 8 ? 0 : int64_t(u64(at));
      case 5: case 10: {
        const double num = type == 5 ? double(u32(at)) : double(int32_t(u32(at)));
        const double den = type == 5 ? double(u32(at + 4)) : double(int32_t(u32(at + 4)));
        return den == 0 ? 0 : whole(num / den);
      }
      case 11: {
        const uint32_t bits = u32(at);
        float f;
        std::memcpy(&f, &bits, 4);
        return whole(f);
      }
      case 12: {
        const uint64_t bits = u64(at);
        double d;
        std::memcpy(&d, &bits, 8);
        return whole(d);
      }
      default: return 0;  // bytes or text
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
