// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, row-wise over [rows, dim].
#pragma once
#include <cstdint>

namespace infini::ops {

// y (=), rstd[rows] (=) saved for backward.
template <class T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t rows, int64_t dim, double eps);

// dx (+= when accumulate, else =); dw (+=, may be null).
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* rstd, const T* w,
                      int64_t rows, int64_t dim, bool accumulate);

}  // namespace infini::ops
