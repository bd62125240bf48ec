// Large blocks of memory kept for reuse once freed, up to a byte budget: 64 MiB, or two of
// the largest block given back so far (as glibc's own thresholds follow the sizes it sees),
// so that a steady stream of same-size batches always finds one. Batches made in
// the main process come from here: a freed batch's block goes to the next batch of its
// size, whose pages are then already mapped (no fault per page), and batch-sized blocks
// stay out of the heap the dataset's own arrays come from (no fragmentation between them).
// Sizes are rounded up to 2 MiB. No transparent huge pages: where the kernel has no free
// huge page, the first touch stalls on compaction (40 ms for 10 MB seen here).
#pragma once
#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace fastloader {

class BlockPool {
 public:
  explicit BlockPool(size_t min_keep_bytes) : keep_bytes_(min_keep_bytes) {}

  // A block of at least n bytes (its size in *size), or null when the system has no memory.
  void* take(size_t n, size_t* size);
  // Returns a block take() gave; kept if the budget allows, else unmapped (oldest first).
  void give_back(void* block, size_t size);
  size_t kept_bytes();

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;  // oldest first
  size_t kept_ = 0;
  size_t keep_bytes_;
};

}  // namespace fastloader
