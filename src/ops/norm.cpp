#include "ops/norm.hpp"

#include <cmath>
#include <vector>

#include "ops/parallel.hpp"

namespace infini::ops {

template <class T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t rows, int64_t dim,
                     double eps) {
  parallel_blocks(rows, rows * dim > 32768, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * dim;
      double ss = 0;  // accumulate in double: dim can be thousands
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * double(xr[i]);
      T inv = T(1.0 / std::sqrt(ss / double(dim) + eps));
      rstd[r] = inv;
      T* yr = y + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
    }
  });
}

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* rstd, const T* w,
                      int64_t rows, int64_t dim, bool accumulate) {
  // dx_i = r * g_i - r^3 * x_i * (sum_j g_j x_j) / dim, with g = dy * w.
  parallel_blocks(rows, rows * dim > 32768, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * dim;
      const T* dyr = dy + r * dim;
      T* dxr = dx + r * dim;
      const T inv = rstd[r];
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < dim; ++i) dot += double(dyr[i]) * double(w[i]) * double(xr[i]);
      const T coef = T(dot / double(dim)) * inv * inv * inv;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        T v = inv * dyr[i] * w[i] - coef * xr[i];
        dxr[i] = accumulate ? dxr[i] + v : v;
      }
    }
  });
  if (dw) {
    // Column sums, row by row (contiguous) into double accumulators; each thread owns a block
    // of columns, so there is no race.
    parallel_blocks(dim, rows * dim > 32768, [&](int64_t c0, int64_t c1) {
      std::vector<double> acc(size_t(c1 - c0), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const T* dyr = dy + r * dim + c0;
        const T* xr = x + r * dim + c0;
        const T rs = rstd[r];
#pragma omp simd
        for (int64_t i = 0; i < c1 - c0; ++i) acc[size_t(i)] += double(dyr[i] * xr[i] * rs);
      }
      for (int64_t i = c0; i < c1; ++i) dw[i] += T(acc[size_t(i - c0)]);
    });
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t, bool);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t, bool);

}  // namespace infini::ops
