#include "lazy_shuffle.h"

#include <algorithm>

namespace fastloader {

// Past 1/16 of n (at most 64K steps) the map is as large as it is worth keeping, and the
// first batches of the epoch are out: the rest runs on a plain array.
LazyShuffle::LazyShuffle(int64_t n) : n_(std::max<int64_t>(n, 0)), dense_after_(std::min<int64_t>(n_ / 16, 1 << 16)) {}

size_t LazyShuffle::slot_of(int64_t position) const {
  const size_t mask = keys_.size() - 1;
  size_t slot = size_t(uint64_t(position) * 0x9E3779B97F4A7C15ull >> shift_);  // Fibonacci hashing
  while (keys_[slot] != -1 && keys_[slot] != position) slot = (slot + 1) & mask;
  return slot;
}

int64_t LazyShuffle::get(int64_t position) const {
  if (keys_.empty()) return position;
  const size_t slot = slot_of(position);
  return keys_[slot] == -1 ? position : values_[slot];
}

void LazyShuffle::put(int64_t position, int64_t value) {
  if (2 * (used_ + 1) > keys_.size()) {  // keep the load at or under one half
    std::vector<int64_t> keys(std::max<size_t>(1024, 2 * keys_.size()), -1), values(keys.size());
    shift_ = 64;
    for (size_t size = keys.size(); size > 1; size >>= 1) --shift_;
    keys.swap(keys_);
    values.swap(values_);
    for (size_t s = 0; s < keys.size(); ++s)
      if (keys[s] != -1) {
        const size_t slot = slot_of(keys[s]);
        keys_[slot] = keys[s];
        values_[slot] = values[s];
      }
  }
  const size_t slot = slot_of(position);
  if (keys_[slot] == -1) {
    keys_[slot] = position;
    ++used_;
  }
  values_[slot] = value;
}

void LazyShuffle::densify() {
  dense_.reset(new int64_t[size_t(n_)]);  // entries before done_ are never read
  for (int64_t p = done_; p < n_; ++p) dense_[p] = p;
  for (size_t s = 0; s < keys_.size(); ++s)
    if (keys_[s] >= done_) dense_[keys_[s]] = values_[s];
  std::vector<int64_t>().swap(keys_);
  std::vector<int64_t>().swap(values_);
  used_ = 0;
}

}  // namespace fastloader
