#include "ops/bf16_gemm.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "ops/gemm.hpp"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define INFINI_BF16_KERNEL 1
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, as in sgemm.cpp
#endif
#endif

namespace infini::ops {

uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

namespace {

constexpr int kNR = 32;  // columns per packed panel: two vectors of 16 fp32 accumulators

// Packed index of op(B)[p][j]: panel j / 32, row pair p / 2, column j % 32, element p % 2.
inline size_t packed_index(int64_t kpairs, int64_t p, int64_t j) {
  return size_t(((j / kNR) * kpairs + p / 2) * (2 * kNR) + (j % kNR) * 2 + (p % 2));
}

}  // namespace

namespace {

// The scalar packing: the reference the vector one is tested against, and the one builds
// without AVX512-BF16 use.
void pack_scalar(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  const int64_t kpairs = (k + 1) / 2;
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j)
      d[packed_index(kpairs, p, j)] = to_bf16(trans_b ? b[j * ldb + p] : b[p * ldb + j]);
}

void pack_vector(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d);

// Allocates (or reuses) out's buffer for op(B) [k, n]. zero: clear it all (the packers that
// do not write the padding themselves).
uint16_t* prepare(int64_t k, int64_t n, PackedBf16& out, bool zero = true) {
  const int64_t kpairs = (k + 1) / 2, panels = (n + kNR - 1) / kNR;
  const size_t need = size_t(panels * kpairs * 2 * kNR);
  if (out.capacity < need) {
    out.data.reset(static_cast<uint16_t*>(std::aligned_alloc(64, (need * 2 + 63) / 64 * 64)));
    if (!out.data) throw Error("bf16_pack: out of memory");
    out.capacity = need;
  }
  out.k = k;
  out.n = n;
  if (zero) std::memset(out.data.get(), 0, need * sizeof(uint16_t));
  return out.data.get();
}

}  // namespace

void bf16_pack(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, PackedBf16& out) {
  // The vector packer of an untransposed B writes every value, padding included.
  const bool native = bf16_native_available();
  uint16_t* d = prepare(k, n, out, !(native && !trans_b));
  if (native)
    pack_vector(trans_b, k, n, b, ldb, d);
  else
    pack_scalar(trans_b, k, n, b, ldb, d);
}

void bf16_pack_scalar(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,
                      PackedBf16& out) {
  pack_scalar(trans_b, k, n, b, ldb, prepare(k, n, out));
}

namespace {
void convert_transposed_scalar(const float* a, int64_t lda, int64_t r0, int64_t r1, int64_t cols,
                               uint16_t* out, int64_t ldo) {
  for (int64_t t = r0; t < r1; ++t) {
    const float* row = a + t * lda;
    for (int64_t i = 0; i < cols; ++i) out[i * ldo + t] = to_bf16(row[i]);
  }
}
bool convert_transposed_pairs(const float* a, int64_t lda, int64_t t0, int64_t t1, int64_t cols,
                              uint16_t* out, int64_t ldo);
}  // namespace

void bf16_convert_transposed(const float* a, int64_t lda, int64_t r0, int64_t r1, int64_t cols,
                             uint16_t* out, int64_t ldo) {
  // Whole pairs of rows (t even) go as 32-bit words; a row without its partner, alone.
  const int64_t t0 = (r0 + 1) / 2 * 2, t1 = std::max(t0, r1 / 2 * 2);
  if (ldo % 2 || t0 >= t1 || !convert_transposed_pairs(a, lda, t0, t1, cols, out, ldo)) {
    convert_transposed_scalar(a, lda, r0, r1, cols, out, ldo);
    return;
  }
  convert_transposed_scalar(a, lda, r0, t0, cols, out, ldo);
  convert_transposed_scalar(a, lda, t1, r1, cols, out, ldo);
}

#if defined(INFINI_BF16_KERNEL)

namespace {

constexpr int kMR = 12;

inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// Rows [i0, i0 + rows) of op(A) as bf16, row r at out + r * kp (kp = k rounded up to even,
// the pad zero), so that each 32-bit word is the pair (2p, 2p + 1) the kernel broadcasts.
void convert_rows(const float* a, int64_t lda, bool trans_a, int64_t i0, int64_t rows, int64_t k,
                  int64_t kp, uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* o = out + r * kp;
    if (!trans_a) {
      const float* src = a + (i0 + r) * lda;
      int64_t p = 0;
      for (; p + 32 <= k; p += 32) {
        const __m512bh v =
            _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + p + 16), _mm512_loadu_ps(src + p));
        _mm512_storeu_si512(o + p, (__m512i)v);
      }
      for (; p < k; ++p) o[p] = to_bf16(src[p]);
    } else {
      for (int64_t p = 0; p < k; ++p) o[p] = to_bf16(a[p * lda + i0 + r]);
    }
    if (kp > k) o[k] = 0;
  }
}

// C[0 .. R, 0 .. nv] = alpha * sum_p A[r, pair p] . B[pair p, :] + beta * C.
template <int R>
void micro_kernel(int64_t kpairs, const uint16_t* a, int64_t kp, const uint16_t* bp, float* c,
                  int64_t ldc, float alpha, float beta, int64_t nv) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);
  const int64_t astride = kp / 2;
  for (int64_t p = 0; p < kpairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(bp + p * 2 * kNR);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(bp + p * 2 * kNR + kNR);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a32[r * astride + p]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
  const __mmask16 m0 = first_lanes(nv), m1 = first_lanes(nv - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    __m512 x0 = _mm512_mul_ps(acc0[r], va), x1 = _mm512_mul_ps(acc1[r], va);
    if (beta != 0.0f) {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);
    }
    _mm512_mask_storeu_ps(cr, m0, x0);
    _mm512_mask_storeu_ps(cr + 16, m1, x1);
  }
}

using Kernel = void (*)(int64_t, const uint16_t*, int64_t, const uint16_t*, float*, int64_t, float,
                        float, int64_t);
template <int... R>
constexpr auto kernel_table(std::integer_sequence<int, R...>) {
  return std::array<Kernel, sizeof...(R)>{&micro_kernel<R + 1>...};
}
constexpr auto kKernels = kernel_table(std::make_integer_sequence<int, kMR>{});

// B not transposed: rows 2p and 2p + 1 of a 32-column panel, each converted to 32 bf16 and
// interleaved element by element.
void pack_rows(int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  const int64_t kpairs = (k + 1) / 2;
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t j0 = 0; j0 < n; j0 += kNR) {
    const __mmask16 m0 = first_lanes(n - j0), m1 = first_lanes(n - j0 - 16);
    auto row = [&](int64_t p) {
      if (p >= k) return _mm512_setzero_si512();
      const float* s = b + p * ldb + j0;
      return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, s + 16),
                                          _mm512_maskz_loadu_ps(m0, s));
    };
    uint16_t* panel = d + (j0 / kNR) * kpairs * 2 * kNR;
    for (int64_t pp = 0; pp < kpairs; ++pp) {
      const __m512i even = row(2 * pp), odd = row(2 * pp + 1);
      _mm512_store_si512(panel + pp * 2 * kNR, _mm512_permutex2var_epi16(even, lo, odd));
      _mm512_store_si512(panel + pp * 2 * kNR + kNR, _mm512_permutex2var_epi16(even, hi, odd));
    }
  }
}

// B transposed (a weight [n, k] packed as W^T): row j of the source, converted, is already the
// sequence of 32-bit pairs column j needs; they are written 32 words apart.
void pack_columns(int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  const int64_t kpairs = (k + 1) / 2;
  thread_local std::vector<uint16_t> row;
  row.assign(size_t(2 * kpairs + 32), 0);
  uint32_t* d32 = reinterpret_cast<uint32_t*>(d);
  for (int64_t j = 0; j < n; ++j) {
    const float* s = b + j * ldb;
    int64_t p = 0;
    for (; p + 32 <= k; p += 32)
      _mm512_storeu_si512(row.data() + p, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + p + 16),
                                                                       _mm512_loadu_ps(s + p)));
    for (; p < k; ++p) row[size_t(p)] = to_bf16(s[p]);
    if (k % 2) row[size_t(k)] = 0;
    uint32_t* col = d32 + (j / kNR) * kpairs * kNR + (j % kNR);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(row.data());
    for (int64_t pp = 0; pp < kpairs; ++pp) col[pp * kNR] = w[pp];
  }
}

void pack_vector(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  if (trans_b)
    pack_columns(k, n, b, ldb, d);
  else
    pack_rows(k, n, b, ldb, d);
}

// z[r] lane c becomes z[c] lane r (32-bit lanes).
inline void transpose_16x16_epi32(__m512i z[16]) {
  __m512i t[16];
  for (int r = 0; r < 16; r += 2) {  // pairs of rows: lanes interleaved by one
    t[r] = _mm512_unpacklo_epi32(z[r], z[r + 1]);
    t[r + 1] = _mm512_unpackhi_epi32(z[r], z[r + 1]);
  }
  for (int r = 0; r < 16; r += 4) {  // by two
    z[r] = _mm512_unpacklo_epi64(t[r], t[r + 2]);
    z[r + 1] = _mm512_unpackhi_epi64(t[r], t[r + 2]);
    z[r + 2] = _mm512_unpacklo_epi64(t[r + 1], t[r + 3]);
    z[r + 3] = _mm512_unpackhi_epi64(t[r + 1], t[r + 3]);
  }
  // Now z[4q + j] lane (4b + x) holds row 4q + x, column 4b + j: 128-bit blocks move next.
  for (int j = 0; j < 4; ++j) {
    const __m512i a0 = z[j], a1 = z[4 + j], a2 = z[8 + j], a3 = z[12 + j];
    const __m512i b0 = _mm512_shuffle_i32x4(a0, a1, 0x88), b1 = _mm512_shuffle_i32x4(a0, a1, 0xDD);
    const __m512i b2 = _mm512_shuffle_i32x4(a2, a3, 0x88), b3 = _mm512_shuffle_i32x4(a2, a3, 0xDD);
    t[j] = _mm512_shuffle_i32x4(b0, b2, 0x88);       // column block 0
    t[8 + j] = _mm512_shuffle_i32x4(b0, b2, 0xDD);   // column block 2
    t[4 + j] = _mm512_shuffle_i32x4(b1, b3, 0x88);   // column block 1
    t[12 + j] = _mm512_shuffle_i32x4(b1, b3, 0xDD);  // column block 3
  }
  for (int r = 0; r < 16; ++r) z[r] = t[r];
}

// Rows t0 .. t1 (t0, t1 even) as pairs: 16 columns of rows t and t + 1 become 16 words, each
// written to its column's row of the output.
bool convert_transposed_pairs(const float* a, int64_t lda, int64_t t0, int64_t t1, int64_t cols,
                              uint16_t* out, int64_t ldo) {
  if (!bf16_native_available()) return false;
  const __m512i zip = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i stride =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(int(ldo / 2)));
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out);
  const int64_t w = ldo / 2;  // output row stride in words
  // Whole tiles of 16 pairs x 16 columns: the 16 word vectors (one per pair, a word per
  // column) are transposed in registers and stored as 16 contiguous runs of 16 words, one per
  // column; cheaper than scattering every word. The rest below goes word by word.
  const int64_t tiles_end = t0 + (t1 - t0) / 32 * 32, cols16 = cols / 16 * 16;
  for (int64_t tb = t0; tb < tiles_end; tb += 32)
    for (int64_t i = 0; i < cols16; i += 16) {
      __m512i z[16];
      for (int p = 0; p < 16; ++p) {
        const float* x0 = a + (tb + 2 * p) * lda + i;
        z[p] = _mm512_permutexvar_epi16(
            zip, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x0 + lda), _mm512_loadu_ps(x0)));
      }
      transpose_16x16_epi32(z);
      for (int c = 0; c < 16; ++c) _mm512_storeu_si512(o32 + (i + c) * w + tb / 2, z[c]);
    }
  for (int64_t t = t0; t < t1; t += 2) {
    const bool tiled = t < tiles_end;
    if (tiled && cols16 == cols) continue;
    const float* x0 = a + t * lda;
    const float* x1 = x0 + lda;
    for (int64_t i = tiled ? cols16 : 0; i < cols; i += 16) {
      const __mmask16 m = first_lanes(cols - i);
      // Low half: the 16 values of row t; high half: those of row t + 1; then interleaved.
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, x1 + i),
                                                        _mm512_maskz_loadu_ps(m, x0 + i));
      const __m512i words = _mm512_permutexvar_epi16(zip, both);
      _mm512_mask_i32scatter_epi32(o32 + i * (ldo / 2) + t / 2, m, stride, words, 4);
    }
  }
  return true;
}

// The product over A already in bf16 (rows of kp values, pairs adjacent).
void gemm_converted_rows(int64_t m, int64_t n, int64_t use_pairs, float alpha, const uint16_t* a,
                         int64_t kp, const PackedBf16& b, float beta, float* c, int64_t ldc) {
  const int64_t kpairs = (b.k + 1) / 2;
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - i0);
    for (int64_t j0 = 0; j0 < n; j0 += kNR) {
      const uint16_t* bp = b.data.get() + (j0 / kNR) * kpairs * 2 * kNR;
      kKernels[size_t(rows - 1)](use_pairs, a + i0 * kp, kp, bp, c + i0 * ldc + j0, ldc, alpha,
                                 beta, std::min<int64_t>(kNR, n - j0));
    }
  }
}

}  // namespace

bool bf16_native_available() {
  static const bool ok =
      __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512bw") != 0;
  return ok;
}

void bf16_gemm_packed(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc) {
  if (!bf16_native_available()) throw Error("bf16_gemm_packed: no AVX512-BF16 on this CPU");
  if (k > b.k || n > b.n) throw Error("bf16_gemm_packed: the product is larger than the packing");
  if (m <= 0 || n <= 0) return;
  // Only the first k rows of B take part: the pairs past k/2 are skipped, and a pair cut by
  // an odd k meets the zero A pads.
  const int64_t use_pairs = (k + 1) / 2, kp = 2 * use_pairs;
  thread_local std::vector<uint16_t> abuf;
  abuf.resize(size_t(kMR * kp));
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - i0);
    convert_rows(a, lda, trans_a, i0, rows, k, kp, abuf.data());
    gemm_converted_rows(rows, n, use_pairs, alpha, abuf.data(), kp, b, beta, c + i0 * ldc, ldc);
  }
}

void bf16_gemm_converted(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a,
                         int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc) {
  if (!bf16_native_available()) throw Error("bf16_gemm_converted: no AVX512-BF16 on this CPU");
  if (k > b.k || n > b.n)
    throw Error("bf16_gemm_converted: the product is larger than the packing");
  if (lda % 2 || lda < k) throw Error("bf16_gemm_converted: lda must be even and at least k");
  if (m <= 0 || n <= 0) return;
  gemm_converted_rows(m, n, (k + 1) / 2, alpha, a, lda, b, beta, c, ldc);
}

#else  // no AVX512-BF16 in this build

namespace {
void pack_vector(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  pack_scalar(trans_b, k, n, b, ldb, d);
}
bool convert_transposed_pairs(const float*, int64_t, int64_t, int64_t, int64_t, uint16_t*,
                              int64_t) {
  return false;
}
}  // namespace

bool bf16_native_available() { return false; }

void bf16_gemm_converted(int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
                         const PackedBf16&, float, float*, int64_t) {
  throw Error("bf16_gemm_converted: this build has no AVX512-BF16 kernel");
}

void bf16_gemm_packed(bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                      const PackedBf16&, float, float*, int64_t) {
  throw Error("bf16_gemm_packed: this build has no AVX512-BF16 kernel");
}

#endif

std::string bf16_backend_name() {
  return bf16_native_available() ? "native-avx512bf16"
                                 : "emulated (no AVX512-BF16 on this CPU or build)";
}

void bf16_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (!bf16_native_available()) {
    bf16_gemm_emulated(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  thread_local PackedBf16 packed;
  bf16_pack(trans_b, k, n, b, ldb, packed);
  bf16_gemm_packed(trans_a, m, n, k, alpha, a, lda, packed, beta, c, ldc);
}

void bf16_gemm_emulated(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                        float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  std::vector<float> ar(size_t(m * k)), br(size_t(k * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p)
      ar[size_t(i * k + p)] = round_bf16(trans_a ? a[p * lda + i] : a[i * lda + p]);
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j)
      br[size_t(p * n + j)] = round_bf16(trans_b ? b[j * ldb + p] : b[p * ldb + j]);
  gemm<float>(false, false, m, n, k, alpha, ar.data(), k, br.data(), n, beta, c, ldc);
}

}  // namespace infini::ops
