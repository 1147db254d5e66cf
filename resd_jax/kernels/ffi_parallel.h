// Spreading one FFI call's work over XLA:CPU's intra-op thread pool (shared by our kernels).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace resd {

// Units 0..n_units-1 handed out by an atomic counter to the calling thread and to helpers scheduled on the
// pool; returns when every unit is done. The counters live on the heap, so a helper that starts after all
// units are claimed touches nothing of the caller's (it only calls `fn` for a unit it claimed).
template <typename Fn>
void parallel_units(xla::ffi::ThreadPool& pool, int64_t n_units, Fn fn) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, n_units, &fn]() {
    for (int64_t u; (u = shared->next.fetch_add(1)) < n_units;) {
      fn(u);
      shared->done.fetch_add(1);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n_units - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (shared->done.load() < n_units) std::this_thread::yield();
}

}  // namespace resd
