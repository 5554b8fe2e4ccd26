// infini's own single-precision GEMM for CPUs with AVX-512: a 12x32 register-tiled
// micro-kernel over packed panels of B, reading A in place.
//
// Why not only OpenBLAS: the GEMM shapes of a training step are small and skinny (a thread's
// share of one segment's rows times one weight matrix), the deployment environment may pin
// OpenBLAS to its AVX2 kernels (OPENBLAS_CORETYPE), and OpenBLAS packs both operands on every
// call. This kernel uses the full vector width the build targets and packs only B.
// OpenBLAS stays the fallback (builds without AVX-512) and the reference it is tested against.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace infini::ops {

// op(B) [k, n] packed once for many products (a weight matrix used by every segment, the keys
// of an attention head used by every query block). Reused buffers grow, never shrink.
struct PackedMatrix {
  int64_t k = 0, n = 0;    // op(B) is k x n
  int64_t kc = 0, nc = 0;  // the blocking it was packed with
  size_t capacity = 0;     // floats allocated
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data;
  size_t bytes() const { return capacity * sizeof(float); }
};

// True when this build carries the AVX-512 kernel and the CPU running it has AVX-512F. The
// functions below may be called only then.
bool sgemm_native_available();

// C[m, n] = alpha op(A) op(B) + beta C, row-major, op(X) = X or X^T; single-threaded. beta == 0
// never reads C (it may hold NaN). Each element of C is computed by the same sequence of
// operations whatever m, n, the leading dimensions or the caller's split of rows and columns,
// so results do not depend on how the work is shared between threads. Throws infini::Error
// when the build has no kernel.
void sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);

// Packs op(B) [k, n] into `out` (its buffer is reused when large enough).
void sgemm_pack(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,
                PackedMatrix& out);

// sgemm_native with B packed by sgemm_pack: C[m, n] = alpha op(A) op(B)[0 .. k, 0 .. n] + beta C.
// n and k may be less than the packed ones: the first n columns and k rows are used (a causal
// attention block sees a prefix of the keys). With the packed k the result is bit-identical to
// sgemm_native's; with a shorter k the sum is split at the packing's k blocks instead.
void sgemm_native_packed(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const PackedMatrix& b, float beta, float* c,
                         int64_t ldc);

}  // namespace infini::ops
