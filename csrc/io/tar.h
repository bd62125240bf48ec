// Tar archive scanning over a byte buffer: ustar, GNU (long names, base-256 sizes) and pax
// headers. Hands out member data positions, never copies data. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastloader {

struct TarMember {
  std::string name;      // full path (pax path / GNU long name / ustar prefix applied)
  uint64_t header = 0;   // offset of the member's first header (extension headers included)
  uint64_t offset = 0;   // offset of its data
  uint64_t size = 0;     // data bytes
};

struct TarScan {
  std::vector<TarMember> members;  // regular files only, in archive order
  uint64_t consumed = 0;           // offset up to which the buffer was fully parsed
  bool at_end = false;             // the end-of-archive marker (zero blocks) was reached
  std::string error;               // empty unless the archive is damaged at error_offset
  uint64_t error_offset = 0;
};

// Scans `data[0, len)`, which sits at `base` in the archive. With `final` false the buffer
// is a prefix of a stream: scanning stops (without error) before a member whose data is
// not all in the buffer, and `consumed` tells where to resume. With `final` true, such a
// member is a truncation error. A header declaring more than `max_member_size` data bytes
// is an error before any data is read.
TarScan scan_tar(const uint8_t* data, size_t len, uint64_t base, bool final,
                 uint64_t max_member_size);

}  // namespace fastloader
