#include "packing.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace fastloader {

std::vector<int64_t> first_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  // A max-tree over the room left in rows 0..n-1 (a row not used yet has all of it):
  // the first row with room for an item is found by walking down from the root.
  size_t leaves = 1;
  while (leaves < size_t(std::max<int64_t>(n, 1))) leaves *= 2;
  std::vector<int64_t> room(2 * leaves, capacity);
  for (size_t i = leaves + size_t(n); i < 2 * leaves; ++i) room[i] = -1;  // rows past n never exist
  for (size_t i = leaves - 1; i > 0; --i) room[i] = std::max(room[2 * i], room[2 * i + 1]);
  std::vector<int64_t> row(static_cast<size_t>(n));
  for (int64_t item : order) {
    const int64_t len = lengths[item];
    if (len < 0 || len > capacity) throw std::invalid_argument("a length is outside [0, capacity]");
    size_t node = 1;
    while (node < leaves) node = room[2 * node] >= len ? 2 * node : 2 * node + 1;
    row[size_t(item)] = int64_t(node - leaves);
    room[node] -= len;
    for (node /= 2; node > 0; node /= 2) room[node] = std::max(room[2 * node], room[2 * node + 1]);
  }
  return row;
}

}  // namespace fastloader
