#include "ops/rope.hpp"

#include <cmath>

#include "ops/parallel.hpp"

namespace infini::ops {

template <class T>
RopeTable<T>::RopeTable(int64_t d, int64_t n, double theta)
    : head_dim(d), max_positions(n), cos(size_t(n * (d / 2))), sin(size_t(n * (d / 2))) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * double(i) / double(d));
    for (int64_t p = 0; p < n; ++p) {
      const double angle = double(p) * inv_freq;
      cos[p * half + i] = T(std::cos(angle));
      sin[p * half + i] = T(std::sin(angle));
    }
  }
}

template <class T>
void rope_apply(T* out, const T* x, int64_t rows, int64_t heads, const int32_t* positions,
                const RopeTable<T>& table, bool inverse) {
  const int64_t d = table.head_dim, half = d / 2;
  const T sign = inverse ? T(-1) : T(1);
  parallel_blocks(rows, rows * heads * d > 32768, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* c = table.cos.data() + int64_t(positions[r]) * half;
      const T* s = table.sin.data() + int64_t(positions[r]) * half;
      for (int64_t h = 0; h < heads; ++h) {
        const T* v = x + (r * heads + h) * d;
        T* o = out + (r * heads + h) * d;
        // Iteration i reads and writes only the pair (i, i + half): in place is safe, and no
        // iteration depends on another (GCC cannot see that when out may be x).
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const T a = v[i], b = v[i + half], sn = sign * s[i];
          o[i] = a * c[i] - b * sn;
          o[i + half] = b * c[i] + a * sn;
        }
      }
    }
  });
}

template <class T>
void rope_apply_head(T* x, int64_t rows, int64_t ld, const int32_t* positions,
                     const RopeTable<T>& table, bool inverse) {
  const int64_t half = table.head_dim / 2;
  const T sign = inverse ? T(-1) : T(1);
  for (int64_t r = 0; r < rows; ++r) {
    const T* c = table.cos.data() + int64_t(positions[r]) * half;
    const T* s = table.sin.data() + int64_t(positions[r]) * half;
    T* v = x + r * ld;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const T a = v[i], b = v[i + half], sn = sign * s[i];
      v[i] = a * c[i] - b * sn;
      v[i + half] = b * c[i] + a * sn;
    }
  }
}

template struct RopeTable<float>;
template struct RopeTable<double>;
template void rope_apply<float>(float*, const float*, int64_t, int64_t, const int32_t*,
                                const RopeTable<float>&, bool);
template void rope_apply<double>(double*, const double*, int64_t, int64_t, const int32_t*,
                                 const RopeTable<double>&, bool);
template void rope_apply_head<float>(float*, int64_t, int64_t, const int32_t*,
                                     const RopeTable<float>&, bool);
template void rope_apply_head<double>(double*, int64_t, int64_t, const int32_t*,
                                      const RopeTable<double>&, bool);

}  // namespace infini::ops
