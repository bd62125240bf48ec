#include "lazy_shuffle.h"

#include <algorithm>
#include <stdexcept>

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

void LazyShuffle::reserve_for(int64_t count) {
  if (count < 0 || count > remaining()) throw std::length_error("LazyShuffle: more steps than remain");
  if (!dense_ && done_ + count > dense_after_) dense_.reset(new int64_t[size_t(n_)]);
  // Each step before the switch adds at most one entry; keep the load at or under half.
  const size_t entries = used_ + size_t(std::max<int64_t>(0, std::min(done_ + count, dense_after_) - done_));
  size_t slots = std::max<size_t>(keys_.size(), 1024);
  while (2 * entries > slots) slots *= 2;
  if (entries > 0 && slots != keys_.size()) grow_map(slots);
}

void LazyShuffle::grow_map(size_t slots) {
  std::vector<int64_t> keys(slots, -1), values(slots);
  shift_ = 64;
  for (size_t size = slots; size > 1; size >>= 1) --shift_;
  keys.swap(keys_);
  values.swap(values_);
  for (size_t s = 0; s < keys.size(); ++s)
    if (keys[s] != -1) {
      const size_t slot = slot_of(keys[s]);
      keys_[slot] = keys[s];
      values_[slot] = values[s];
    }
}

void LazyShuffle::put(int64_t position, int64_t value) {  // room was made by reserve_for
  const size_t slot = slot_of(position);
  if (keys_[slot] == -1) {
    keys_[slot] = position;
    ++used_;
  }
  values_[slot] = value;
}

void LazyShuffle::densify() {
  for (int64_t p = done_; p < n_; ++p) dense_[p] = p;  // entries before done_ are never read
  for (size_t s = 0; s < keys_.size(); ++s)
    if (keys_[s] >= done_) dense_[keys_[s]] = values_[s];
  std::vector<int64_t>().swap(keys_);
  std::vector<int64_t>().swap(values_);
  used_ = 0;
  dense_ready_ = true;
}

}  // namespace fastloader
