// What this process has used so far (time, memory) and the threads it computes with, for
// progress lines and reports.
#pragma once

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

}  // namespace infini
