// The larger of a running maximum and a new value, where a NaN sticks: std::max(m, NaN) returns
// m, so an error loop written with it would report a NaN result as a perfect match.
#pragma once
#include <cmath>

namespace infini::testing {

template <class T>
T nan_max(T m, T x) {
  return x > m || std::isnan(x) ? x : m;
}

}  // namespace infini::testing
