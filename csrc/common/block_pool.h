// Large blocks of memory kept for reuse once freed. Batches made in the main process come
// from here: a freed batch's block goes to the next batch of its size (up to 1/4 larger),
// whose pages are then already mapped (no fault per page), and batch-sized blocks stay out
// of the heap the dataset's own arrays come from (no fragmentation between them).
//
// The pool keeps up to 64 MiB, or two blocks of the size given back last, so a steady
// stream of same-size batches always finds one and a pass of larger ones (an evaluation
// with bigger batches) is let go once sizes drop again. Sizes are rounded up to 2 MiB. No
// transparent huge pages: where the kernel has no free huge page, the first touch stalls
// (up to 40 ms for 10 MB seen here, in a VM whose host had not backed the memory yet).
#pragma once
#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace fastloader {

class BlockPool {
 public:
  explicit BlockPool(size_t min_keep_bytes) : min_keep_(min_keep_bytes), keep_bytes_(min_keep_bytes) {}

  // A block of at least n bytes (its size in *size), or null when the system has no memory.
  void* take(size_t n, size_t* size);
  // Returns a block take() gave; kept if the budget allows, else unmapped (oldest first).
  void give_back(void* block, size_t size);
  size_t kept_bytes();

  // fork() safety: the forking thread holds the lock across the fork.
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;  // oldest first
  size_t kept_ = 0;
  const size_t min_keep_;
  size_t keep_bytes_;
};

// The process's pool for batches (never destroyed: a batch may outlive interpreter exit).
BlockPool& batch_block_pool();

}  // namespace fastloader
