#include "block_pool.h"

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
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {  // the most recently used first
      if (it->second == want) {
        void* block = it->first;
        free_.erase(std::next(it).base());
        kept_ -= want;
        *size = want;
        return block;
      }
    }
  }
  void* block = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (block == MAP_FAILED) return nullptr;
  *size = want;
  return block;
}

void BlockPool::give_back(void* block, size_t size) {
  std::vector<std::pair<void*, size_t>> drop;
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(block, size);
    kept_ += size;
    keep_bytes_ = std::max(keep_bytes_, 2 * size);
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

}  // namespace fastloader
