// parallel_for over [0, n) on threads started for the call. Not OpenMP: libgomp's thread
// pool does not survive fork(), so a DataLoader worker forked after the parent ran an
// OpenMP region hangs in its first one. Starting threads per batch costs tens of
// microseconds against a batch's tens of milliseconds.
#pragma once
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace fastloader {

// Calls fn(i) for every i in [0, n), each exactly once, on up to num_threads threads
// (the caller's included), handing out indices dynamically. fn must not throw.
template <class F>
void parallel_for(int n, int num_threads, F&& fn) {
  const int threads = std::max(1, std::min(num_threads, n));
  if (threads == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  auto work = [&] {
    for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(i);
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) helpers.emplace_back(work);
  work();
  for (std::thread& h : helpers) h.join();
}

}  // namespace fastloader
