// torch.randperm's forward Fisher-Yates, made as it is read: r starts as 0..n-1 and step
// i swaps r[i] with r[i + draw() % (n - i)], so the first k entries are final after k
// steps. Until part of it is read, only the entries the swaps moved are kept (a hash
// map): laying out all n at once would cost time before the first batch (33 ms for
// 10M), and in a process that forks DataLoader workers next, every page a later swap
// touches would be copied on write (~200 faults per batch of 256 from 100k).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace fastloader {

class LazyShuffle {
 public:
  explicit LazyShuffle(int64_t n);  // n >= 0

  int64_t size() const { return n_; }
  int64_t remaining() const { return n_ - done_; }

  // Writes the next count (<= remaining()) entries to out; draw() gives the generator's
  // next 32-bit number, called once per step but the last. What the steps need is
  // allocated before the first (an allocation failure throws with nothing drawn).
  template <class Draw>
  void next(int64_t count, Draw&& draw, int64_t* out) {
    reserve_for(count);
    for (int64_t k = 0; k < count; ++k, ++done_) {
      if (!dense_ready_ && done_ >= dense_after_) densify();
      const int64_t i = done_;
      const int64_t j = i < n_ - 1 ? i + int64_t(draw()) % (n_ - i) : i;
      if (dense_ready_) {
        out[k] = dense_[j];
        dense_[j] = dense_[i];
      } else {
        out[k] = get(j);
        if (j != i) put(j, get(i));  // position i is read now and never again
      }
    }
  }

 private:
  int64_t get(int64_t position) const;
  void put(int64_t position, int64_t value);
  size_t slot_of(int64_t position) const;
  void reserve_for(int64_t count);  // throws std::length_error past remaining()
  void grow_map(size_t slots);
  void densify();

  int64_t n_, done_ = 0, dense_after_;
  std::unique_ptr<int64_t[]> dense_;  // allocated by reserve_for, filled by densify
  bool dense_ready_ = false;
  // Open addressing with linear probing; key -1 marks an empty slot.
  std::vector<int64_t> keys_, values_;
  size_t used_ = 0;
  int shift_ = 64;  // 64 - log2(slots)
};

}  // namespace fastloader
