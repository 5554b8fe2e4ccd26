// How the element-wise ops spread their rows over threads.
#pragma once
#include <omp.h>

#include <cstdint>

namespace infini::ops {

// body(first, last) over [0, count): in static blocks over a new parallel region when
// `worth` it, else on the calling thread. From inside an active parallel region (the forward's
// and backward's threads call the ops on their own rows) it always runs here: libgomp sets up a
// team even for a nested region that gets one thread, measured at about 1 us and two futex
// calls per region, and a chunk calls the ops thousands of times.
template <class F>
void parallel_blocks(int64_t count, bool worth, F&& body) {
  if (!worth || omp_in_parallel()) {
    body(int64_t(0), count);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    body(count * t / nt, count * (t + 1) / nt);
  }
}

}  // namespace infini::ops
