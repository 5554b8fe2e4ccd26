#include "ops/sgemm.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>

#include "core/error.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "ops/avx512_util.hpp"
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns that the "undefined" vectors inside its AVX-512 intrinsics may be used
// uninitialised (GCC bug 105593, fixed in GCC 13); they are not.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace infini::ops {

#if defined(__AVX512F__)

namespace {

// Register tile: MR rows of C times NR = 2 vectors of 16 columns (24 accumulators of the 32
// zmm registers). B is packed in panels of KC x NR; with KC = 256 one panel is 32 KiB and stays
// in L1 while the micro-kernel walks down the rows of A, and a block of NC columns (512 KiB)
// stays in L2.
constexpr int kMR = 12;
constexpr int kNR = 32;
constexpr int64_t kMaxKC = 256;
constexpr int64_t kMaxNC = 512;

// Splits `total` into ceil(total / max_block) nearly equal blocks, so that no block is a sliver
// (a sliver of k would cost a whole pass over C). The split depends on `total` only.
int64_t block_size(int64_t total, int64_t max_block, int64_t align) {
  const int64_t blocks = (total + max_block - 1) / max_block;
  const int64_t size = (total + blocks - 1) / blocks;
  return (size + align - 1) / align * align;
}

// 16 rows r[0..15] of 16 floats in, their transpose out (out[c] = column c of the rows).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L: rows 4i .. 4i+3 at column 4L + c.
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  // Gather lane L of u[c], u[4 + c], u[8 + c], u[12 + c] into column 4L + c.
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[c + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[c + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// Packs op(B)[p0 .. p0+kc, j0 .. j0+nc] into panels of kNR columns: panel q holds, for each p,
// the kNR values of columns j0 + q kNR ..., zero past column j0 + nc.
void pack_b(float* dst, const float* b, int64_t ldb, bool trans_b, int64_t p0, int64_t kc,
            int64_t j0, int64_t nc) {
  for (int64_t jp = 0; jp < nc; jp += kNR) {
    const int64_t w = std::min<int64_t>(kNR, nc - jp);
    float* out = dst + jp * kc;
    if (!trans_b) {
      // Row p of the panel is a contiguous piece of row p0 + p of B.
      const __mmask16 m0 = first_lanes(w), m1 = first_lanes(w - 16);
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = b + (p0 + p) * ldb + j0 + jp;
        _mm512_storeu_ps(out + p * kNR, _mm512_maskz_loadu_ps(m0, src));
        _mm512_storeu_ps(out + p * kNR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
      continue;
    }
    // op(B)[p][j] = b[j ldb + p]: rows of b become columns of the panel, 16 x 16 at a time.
    for (int half = 0; half < 2; ++half) {
      const int64_t rows = std::min<int64_t>(16, w - 16 * half);
      for (int64_t p = 0; p < kc; p += 16) {
        const int64_t cols = std::min<int64_t>(16, kc - p);
        const __mmask16 mask = first_lanes(cols);
        __m512 r[16];
        for (int64_t i = 0; i < 16; ++i)
          r[i] = i < rows ? _mm512_maskz_loadu_ps(mask, b + (j0 + jp + 16 * half + i) * ldb + p0 + p)
                          : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t c = 0; c < cols; ++c) _mm512_storeu_ps(out + (p + c) * kNR + 16 * half, r[c]);
      }
    }
  }
}

// C[0 .. R, 0 .. nv] = alpha * sum_p A[i, p] Bpanel[p, :] + beta C, where A[i, p] is
// a[i * row_step + p * k_step]. The sum runs over p in order with one FMA per term, so every
// element of C sees the same operations whatever R, nv or its place in the tile.
// kPrefetchB: also fetch the next panel of B (b_next) at the rate this one is read; for the
// first row tile of a block, which is the one that brings the block's panels into cache.
template <int R, bool kPrefetchB>
void micro_kernel(int64_t kc, const float* a, int64_t row_step, int64_t k_step, const float* bp,
                  const float* b_next, float* c, int64_t ldc, float alpha, float beta,
                  int64_t nv) {
  // Every loop over the R rows is unrolled so that the accumulators live in registers only
  // (otherwise GCC zeroes them with a memset on the stack and spills them after the k loop).
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    acc0[i] = _mm512_setzero_ps();
    acc1[i] = _mm512_setzero_ps();
  }
  // The tile of C is usually cold (activations stream through the step): ask for it now, it
  // is needed after the k loop. Same for A a few steps ahead (when A is transposed each step is
  // a new cache line).
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16), _MM_HINT_T0);
  }
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_loadu_ps(bp + p * kNR);
    const __m512 b1 = _mm512_loadu_ps(bp + p * kNR + 16);
    const float* ap = a + p * k_step;
    _mm_prefetch(reinterpret_cast<const char*>(ap + 8 * k_step), _MM_HINT_T0);
    if constexpr (kPrefetchB) {
      _mm_prefetch(reinterpret_cast<const char*>(b_next + p * kNR), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b_next + p * kNR + 16), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 av = _mm512_set1_ps(ap[i * row_step]);
      acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
    }
  }
  const __mmask16 m0 = first_lanes(nv), m1 = first_lanes(nv - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    float* ci = c + i * ldc;
    __m512 r0 = _mm512_mul_ps(va, acc0[i]);
    __m512 r1 = _mm512_mul_ps(va, acc1[i]);
    if (beta != 0.0f) {
      r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), r0);
      r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), r1);
    }
    _mm512_mask_storeu_ps(ci, m0, r0);
    _mm512_mask_storeu_ps(ci + 16, m1, r1);
  }
}

using MicroKernel = void (*)(int64_t, const float*, int64_t, int64_t, const float*,
                             const float*, float*, int64_t, float, float, int64_t);
template <bool kPrefetchB, int... R>
constexpr std::array<MicroKernel, kMR + 1> kernel_table(std::integer_sequence<int, R...>) {
  return {nullptr, micro_kernel<R + 1, kPrefetchB>...};
}
// kKernels[prefetch B][rows]
constexpr std::array<MicroKernel, kMR + 1> kKernels[2] = {
    kernel_table<false>(std::make_integer_sequence<int, kMR>()),
    kernel_table<true>(std::make_integer_sequence<int, kMR>())};

// Grows `m`'s buffer to at least `floats` (64-byte aligned, for full-vector loads).
void reserve(PackedMatrix& m, size_t floats) {
  if (m.capacity >= floats) return;
  const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw Error("sgemm: out of memory packing a " + std::to_string(floats * 4) + "-byte matrix");
  m.data.reset(p);
  m.capacity = floats;
}

// Offset of panel jp (columns j0 + jp ..) of block (j0, p0) in a matrix packed with blocks
// kc x nc: blocks of columns one after the other, each of them k x (its width rounded up to
// kNR), split in k blocks of kc x width, each a row of panels of kc x kNR.
struct Layout {
  int64_t k, n, kc, nc;
  int64_t block_width(int64_t j0) const { return (std::min(nc, n - j0) + kNR - 1) / kNR * kNR; }
  int64_t block(int64_t j0, int64_t p0) const { return j0 * k + p0 * block_width(j0); }
};

Layout layout_for(int64_t k, int64_t n) {
  return {k, n, block_size(k, kMaxKC, 1), block_size(n, kMaxNC, kNR)};
}

// Rows of the next register tile: kMR, except that a remainder of kMR + 1 .. 2 kMR - 1 rows is
// split in two near-equal tiles (a tile of a few rows wastes most of the kernel's width).
int tile_rows(int64_t remaining) {
  if (remaining >= 2 * kMR || remaining <= kMR) return int(std::min<int64_t>(kMR, remaining));
  return int((remaining + 1) / 2);
}

// C[:, j0 .. j0+nc] (+)= alpha A[:, p0 .. p0+kc] Bblock for one packed block, whose panels
// are panel_stride floats apart (kc, or more when only the first kc rows of a block are used).
void multiply_block(int64_t m, int64_t kc, int64_t nc, const float* a, int64_t row_step,
                    int64_t k_step, const float* block, int64_t panel_stride, float alpha,
                    float beta, float* c, int64_t ldc) {
  for (int64_t i0 = 0; i0 < m;) {
    const int rows = tile_rows(m - i0);
    const float* ap = a + i0 * row_step;
    const bool first = i0 == 0;
    for (int64_t jp = 0; jp < nc; jp += kNR) {
      const bool prefetch = first && jp + kNR < nc;
      kKernels[prefetch][size_t(rows)](kc, ap, row_step, k_step, block + jp * panel_stride,
                                       block + (jp + kNR) * panel_stride, c + i0 * ldc + jp,
                                       ldc, alpha, beta, std::min<int64_t>(kNR, nc - jp));
    }
    i0 += rows;
  }
}

// What sgemm does for k == 0 or alpha == 0: C = beta C, without reading C when beta == 0.
void scale_only(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
}

}  // namespace

// This file is compiled for AVX-512 (CMakeLists.txt); the CPU running it may not have it.
bool sgemm_native_available() {
  // Called from static initialisers too (ops/gemm.cpp), so make sure CPU detection has run.
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx512f") &&
                                                     __builtin_cpu_supports("fma"));
  return has;
}

void sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || alpha == 0.0f) return scale_only(m, n, beta, c, ldc);
  // A[i, p] = a[i * row_step + p * k_step]: A is read in place, never packed. B is packed one
  // block at a time into a per-thread buffer that stays in L2.
  const int64_t row_step = trans_a ? 1 : lda, k_step = trans_a ? lda : 1;
  const Layout lay = layout_for(k, n);
  thread_local PackedMatrix buffer;
  reserve(buffer, size_t(lay.kc * lay.nc));
  for (int64_t j0 = 0; j0 < n; j0 += lay.nc) {
    const int64_t nc = std::min(lay.nc, n - j0);
    for (int64_t p0 = 0; p0 < k; p0 += lay.kc) {
      const int64_t kc = std::min(lay.kc, k - p0);
      pack_b(buffer.data.get(), b, ldb, trans_b, p0, kc, j0, nc);
      multiply_block(m, kc, nc, a + p0 * k_step, row_step, k_step, buffer.data.get(), kc, alpha,
                     p0 == 0 ? beta : 1.0f, c + j0, ldc);
    }
  }
}

void sgemm_pack(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,
                PackedMatrix& out) {
  const Layout lay = layout_for(std::max<int64_t>(k, 1), std::max<int64_t>(n, 1));
  reserve(out, size_t(lay.k * ((lay.n + kNR - 1) / kNR * kNR)));
  out.k = k;
  out.n = n;
  out.kc = lay.kc;
  out.nc = lay.nc;
  if (k <= 0 || n <= 0) return;
  for (int64_t j0 = 0; j0 < n; j0 += lay.nc)
    for (int64_t p0 = 0; p0 < k; p0 += lay.kc)
      pack_b(out.data.get() + lay.block(j0, p0), b, ldb, trans_b, p0, std::min(lay.kc, k - p0),
             j0, std::min(lay.nc, n - j0));
}

void sgemm_native_packed(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const PackedMatrix& b, float beta, float* c,
                         int64_t ldc) {
  if (k > b.k || n > b.n)
    throw Error("sgemm: a packed " + std::to_string(b.k) + " x " + std::to_string(b.n) +
                " matrix used as " + std::to_string(k) + " x " + std::to_string(n));
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || alpha == 0.0f) return scale_only(m, n, beta, c, ldc);
  const int64_t row_step = trans_a ? 1 : lda, k_step = trans_a ? lda : 1;
  const Layout lay{b.k, b.n, b.kc, b.nc};
  for (int64_t j0 = 0; j0 < n; j0 += lay.nc)
    for (int64_t p0 = 0; p0 < k; p0 += lay.kc)
      multiply_block(m, std::min(lay.kc, k - p0), std::min(lay.nc, n - j0), a + p0 * k_step,
                     row_step, k_step, b.data.get() + lay.block(j0, p0),
                     std::min(lay.kc, b.k - p0), alpha, p0 == 0 ? beta : 1.0f, c + j0, ldc);
}

#else  // a compiler without AVX-512: OpenBLAS does all the work (ops/gemm.cpp)

namespace {
[[noreturn]] void no_kernel() {
  throw Error("sgemm: this build has no AVX-512 kernel (its compiler lacks -mavx512f)");
}
}  // namespace

bool sgemm_native_available() { return false; }

void sgemm_native(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                  const float*, int64_t, float, float*, int64_t) {
  no_kernel();
}
void sgemm_pack(bool, int64_t, int64_t, const float*, int64_t, PackedMatrix&) { no_kernel(); }
void sgemm_native_packed(bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const PackedMatrix&, float, float*, int64_t) {
  no_kernel();
}

#endif

}  // namespace infini::ops
