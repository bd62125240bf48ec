#include "block_pool.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>

namespace fastloader {

namespace {
constexpr size_t kGranule = size_t(2) << 20;  // sizes rounded up to this, so near sizes share blocks
}

void* BlockPool::take(size_t n, size_t* size) {
  const size_t want = (std::max<size_t>(n, 1) + kGranule - 1) / kGranule * kGranule;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {  // the smallest that fits, newest on ties
      if (it->second >= want && it->second <= want + want / 4 && (best == free_.end() || it->second <= best->second))
        best = it;
    }
    if (best != free_.end()) {
      void* block = best->first;
      *size = best->second;
      kept_ -= best->second;
      free_.erase(best);
      return block;
    }
  }
  void* block = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (block == MAP_FAILED) return nullptr;
  madvise(block, want, MADV_NOHUGEPAGE);  // even where the kernel would use them everywhere
  *size = want;
  return block;
}

void BlockPool::give_back(void* block, size_t size) {
  std::vector<std::pair<void*, size_t>> drop;
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(block, size);
    kept_ += size;
    keep_bytes_ = std::max(min_keep_, 2 * size);
    while (kept_ > keep_bytes_) {
      drop.push_back(free_.front());
      kept_ -= free_.front().second;
      free_.erase(free_.begin());
    }
  }
  for (const auto& [p, n] : drop) munmap(p, n);
}

size_t BlockPool::kept_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_;
}

BlockPool& batch_block_pool() {
  static BlockPool* pool = [] {
    auto* p = new BlockPool(size_t(64) << 20);
    pthread_atfork([] { batch_block_pool().lock(); }, [] { batch_block_pool().unlock(); },
                   [] { batch_block_pool().unlock(); });
    return p;
  }();
  return *pool;
}

}  // namespace fastloader
