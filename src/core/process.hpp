// What this process has used so far (time, memory), the threads it computes with and the CPU
// it runs on, for progress lines and reports.
#pragma once

#include <string>

namespace infini {

// Seconds on the monotonic clock (differences only mean something).
double now_s();

// CPU seconds used by every thread of this process so far (CLOCK_PROCESS_CPUTIME_ID). Unlike
// wall time it barely moves when other programs compete for the cores.
double process_cpu_seconds();

// Peak resident set size of this process in MiB (VmHWM of /proc/self/status); 0 where that
// cannot be read.
double peak_rss_mb();

// Threads an OpenMP parallel region of this process gets: omp_get_max_threads() capped by
// OMP_THREAD_LIMIT, which omp_get_max_threads() does not reflect.
int omp_threads();

// The CPU as /proc/cpuinfo names it, with its family and model numbers, e.g. "AMD EPYC
// (family 25, model 17)": speed figures depend on it (two CPUs that both have AVX-512 may
// differ twofold in FMA throughput). "unknown" where /proc/cpuinfo cannot be read.
std::string cpu_model();

}  // namespace infini
