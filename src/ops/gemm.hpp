// Matrix multiply for row-major matrices: C = alpha * op(A) op(B) + beta * C.
// float goes to infini's AVX-512 kernel (ops/sgemm.hpp) where the build has it, else to
// OpenBLAS; double always goes to OpenBLAS. gemm_reference is the plain loop both are tested
// against.
#pragma once
#include <cstdint>
#include <string>

#include "ops/sgemm.hpp"

namespace infini::ops {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Which implementation gemm<float> calls. Native (the default where available) is infini's
// AVX-512 kernel; OpenBLAS is the library. Process-wide; set it before starting work.
enum class GemmBackend { Native, OpenBLAS };
void set_gemm_backend(GemmBackend backend);  // throws when Native is not in this build
GemmBackend gemm_backend();
std::string gemm_backend_name();  // "native-avx512" or "openblas"

// gemm<float> with op(B) packed in advance by sgemm_pack (Native backend only; ops/sgemm.hpp).
void gemm_packed(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const PackedMatrix& b, float beta, float* c, int64_t ldc);

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
