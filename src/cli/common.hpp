// Small helpers shared by the subcommands.
#pragma once
#include <chrono>
#include <string>

namespace infini::cli {

// Peak resident set size of this process in MiB (from /proc/self/status VmHWM).
double peak_rss_mb();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace infini::cli
