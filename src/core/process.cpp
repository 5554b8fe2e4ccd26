#include "core/process.hpp"

#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>

namespace infini {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0.0;
}

int omp_threads() { return std::max(1, std::min(omp_get_max_threads(), omp_get_thread_limit())); }

}  // namespace infini
