// Bin packing of sequence lengths into rows of a fixed capacity (first-fit decreasing).
// Torch-free.
#pragma once
#include <cstdint>
#include <vector>

namespace fastloader {

// The row of each item: items sorted longest first (ties in input order), each into the
// first row with room. O(n log n). Every length must be in [0, capacity].
std::vector<int64_t> first_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity);

}  // namespace fastloader
