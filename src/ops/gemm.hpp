// Matrix multiply for row-major matrices: C = alpha * op(A) op(B) + beta * C.
// float and double go to OpenBLAS; gemm_reference is the plain loop the fast path is tested against.
#pragma once
#include <cstdint>
#include <string>

namespace infini::ops {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// The OpenBLAS kernel set in use ("Haswell", "Cooperlake", ...; OPENBLAS_CORETYPE forces one).
std::string blas_core_name();

template <class T>
void gemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// y[rows, out] = x[rows, in] W[out, in]^T (+ bias[out]).  (= on y)
template <class T>
void linear_forward(T* y, const T* x, const T* w, const T* bias, int64_t rows, int64_t in,
                    int64_t out);

// dx (= when accumulate_dx is false, += otherwise) = dy W; dW += dy^T x; dbias += sum_rows dy.
// dw and dbias may be null when not wanted.
template <class T>
void linear_backward(T* dx, T* dw, T* dbias, const T* dy, const T* x, const T* w, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx);

}  // namespace infini::ops
