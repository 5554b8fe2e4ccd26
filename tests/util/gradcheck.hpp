// Helpers for gradient checks in double precision against central finite differences.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "util/nan_max.hpp"

namespace infini::testing {

inline std::vector<double> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// n token ids uniform in [0, vocab), from `seed`.
inline std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(g() % uint64_t(vocab));
  return t;
}

// Central differences of f at x, for the entries listed (all when empty).
inline std::vector<double> numeric_grad(const std::function<double()>& f, std::vector<double>& x,
                                        double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double fp = f();
    x[i] = keep - h;
    const double fm = f();
    x[i] = keep;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// max |a - b| relative to max(|b|, floor); NaN when either holds a NaN, infinite when the
// sizes differ, so that no tolerance accepts them.
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b,
                      double floor = 1e-8) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    num = nan_max(num, std::abs(a[i] - b[i]));
    den = nan_max(den, std::abs(b[i]));
  }
  return num / den;
}

inline double dot(const std::vector<double>& a, const double* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace infini::testing
