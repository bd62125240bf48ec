#include "tar.h"

#include <cstring>
#include <optional>

namespace fastloader {
namespace {

constexpr size_t kBlock = 512;
constexpr uint64_t kMaxExtensionSize = 1 << 20;  // a pax or GNU long-name record
// Its data is a map of holes plus the parts between them, not the file: tarfile expands
// the holes, this scanner does not, so the member is reported rather than read wrong.
constexpr const char* kSparse = "sparse member (tar --sparse): not supported, re-create the tar without it";

uint64_t padded(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

bool all_zero(const uint8_t* p) {
  for (size_t i = 0; i < kBlock; ++i)
    if (p[i]) return false;
  return true;
}

// A numeric header field: octal ASCII (space/NUL padded) or GNU base-256.
std::optional<uint64_t> parse_number(const uint8_t* p, size_t n) {
  if (p[0] & 0x80) {  // base-256, big-endian; a negative value is invalid here
    if (p[0] & 0x40) return std::nullopt;
    uint64_t v = p[0] & 0x3f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 56) return std::nullopt;  // would overflow
      v = (v << 8) | p[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == 0)) ++i;
  uint64_t v = 0;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 60) return std::nullopt;
    v = v * 8 + (p[i] - '0');
    any = true;
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != 0) return std::nullopt;
  return any ? v : 0;  // an empty field is 0, as tarfile and GNU tar read it
}

bool checksum_ok(const uint8_t* h) {
  auto stored = parse_number(h + 148, 8);
  if (!stored) return false;
  // The sum of the header bytes with the checksum field read as eight spaces.
  uint32_t sum = 0;
  for (size_t i = 0; i < kBlock; ++i) sum += h[i];  // vectorizes
  for (size_t i = 148; i < 156; ++i) sum -= h[i];
  sum += 8 * ' ';
  if (*stored == sum) return true;
  int32_t signed_sum = 0;  // some old writers summed signed chars
  for (size_t i = 0; i < kBlock; ++i)
    signed_sum += (i >= 148 && i < 156) ? ' ' : static_cast<int8_t>(h[i]);
  return static_cast<int64_t>(*stored) == signed_sum;
}

std::string field(const uint8_t* p, size_t n) {
  size_t len = 0;
  while (len < n && p[len]) ++len;
  return std::string(reinterpret_cast<const char*>(p), len);
}

// Reads "LEN key=value\n" records; returns false on a malformed record.
bool parse_pax(const uint8_t* p, size_t n, std::optional<std::string>& path,
               std::optional<uint64_t>& size, bool& sparse) {
  size_t i = 0;
  while (i < n) {
    if (p[i] == 0) break;  // trailing NUL padding
    size_t j = i, len = 0;
    while (j < n && p[j] >= '0' && p[j] <= '9') {
      len = len * 10 + (p[j] - '0');
      if (len > n) return false;
      ++j;
    }
    if (j == i || j >= n || p[j] != ' ' || len == 0 || i + len > n || p[i + len - 1] != '\n')
      return false;
    const char* rec = reinterpret_cast<const char*>(p + j + 1);
    size_t rec_len = i + len - 1 - (j + 1);
    const void* eq = memchr(rec, '=', rec_len);
    if (!eq) return false;
    std::string key(rec, static_cast<const char*>(eq) - rec);
    std::string value(static_cast<const char*>(eq) + 1, rec + rec_len);
    if (key.rfind("GNU.sparse.", 0) == 0) {
      sparse = true;
    } else if (key == "path") {
      path = value;
    } else if (key == "size") {
      uint64_t d = 0;  // pax numbers are decimal
      for (char c : value) {
        if (c < '0' || c > '9' || d > (UINT64_MAX - 9) / 10) return false;
        d = d * 10 + (c - '0');
      }
      if (value.empty()) return false;
      size = d;
    }
    i += len;
  }
  return true;
}

}  // namespace

TarScan scan_tar(const uint8_t* data, size_t len, uint64_t base, bool final,
                 uint64_t max_member_size) {
  TarScan out;
  size_t pos = 0;
  auto fail = [&](uint64_t at, std::string why) {
    out.error = std::move(why);
    out.error_offset = base + at;
    return out;
  };
  // Pending extension data for the next member, and where its first header began.
  std::optional<std::string> long_name;
  uint64_t pax_size = 0;
  bool has_pax_size = false;
  bool sparse_next = false;  // a pax header said the next member is sparse
  size_t member_start = 0;
  bool in_member = false;
  if (base == 0 && len == 0 && final) return fail(0, "not a tar file: it is empty (0 bytes)");
  // gzip's magic where the first header should be: a compressed shard with a plain name
  if (base == 0 && len >= 2 && data[0] == 0x1f && data[1] == 0x8b)
    return fail(0, "not a tar file but gzip-compressed data: name it .tar.gz or .tgz to have it "
                   "decompressed while read");
  while (true) {
    if (!in_member) member_start = pos;
    if (len - pos < kBlock) {
      if (pos == len && !in_member) {  // a clean end between members (no end marker)
        out.consumed = base + pos;
        return out;
      }
      if (!final) {
        out.consumed = base + member_start;
        return out;
      }
      return fail(pos, "truncated tar: the file ends inside a header");
    }
    const uint8_t* h = data + pos;
    if (all_zero(h)) {
      if (in_member) return fail(pos, "zero block where a header was expected after an extension header");
      out.at_end = true;
      out.consumed = base + pos + std::min<size_t>(len - pos, 2 * kBlock);
      return out;
    }
    if (!checksum_ok(h)) {
      bool magic = memcmp(h + 257, "ustar", 5) == 0;
      if (base + pos == 0 && !magic) return fail(pos, "not a tar file (no tar header at the start)");
      return fail(pos, "bad tar header checksum");
    }
    auto size_field = parse_number(h + 124, 12);
    if (!size_field) return fail(pos, "bad size field in tar header");
    char type = static_cast<char>(h[156]);
    uint64_t size = *size_field;
    if (has_pax_size && (type == '0' || type == '\0' || type == '7')) size = pax_size;
    bool is_extension = type == 'x' || type == 'g' || type == 'L' || type == 'K';
    uint64_t limit = is_extension ? kMaxExtensionSize : max_member_size;
    if (size > limit)
      return fail(pos, "tar header declares " + std::to_string(size) + " data bytes (limit " +
                           std::to_string(limit) + ")");
    uint64_t data_at = pos + kBlock;
    uint64_t need = final ? size : padded(size);
    if (need > len - data_at) {
      if (!final) {
        out.consumed = base + member_start;
        return out;
      }
      return fail(pos, "truncated tar: member data runs past the end of the file (" +
                           std::to_string(size) + " bytes declared, " +
                           std::to_string(len - data_at) + " left)");
    }
    uint64_t next = std::min<uint64_t>(len, data_at + padded(size));
    const uint8_t* d = data + data_at;
    if (type == 'L') {
      long_name = field(d, size);
      in_member = true;
    } else if (type == 'x') {
      std::optional<std::string> path;
      std::optional<uint64_t> psize;
      bool sparse = false;
      if (!parse_pax(d, size, path, psize, sparse)) return fail(pos, "malformed pax extended header");
      sparse_next = sparse_next || sparse;
      if (path) long_name = path;
      if (psize) pax_size = *psize, has_pax_size = true;
      in_member = true;
    } else if (type == 'S') {
      return fail(pos, kSparse);
    } else if (type == 'g' || type == 'K') {
      in_member = type == 'K' || in_member;  // a long link name belongs to the next member
    } else {
      // failed at its own header, so that a rescan resumes past its data
      if (sparse_next) return fail(pos, kSparse);
      if (type == '0' || type == '\0' || type == '7') {
        std::string name;
        if (long_name) {
          name = *long_name;
        } else {
          name = field(h, 100);
          std::string prefix = memcmp(h + 257, "ustar\0", 6) == 0 ? field(h + 345, 155) : "";
          if (!prefix.empty()) name = prefix + "/" + name;
        }
        out.members.push_back(TarMember{std::move(name), base + member_start, base + data_at, size});
      }
      long_name.reset();
      has_pax_size = false;
      in_member = false;
    }
    pos = next;
  }
}

}  // namespace fastloader
