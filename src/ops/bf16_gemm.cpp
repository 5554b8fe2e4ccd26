#include "ops/bf16_gemm.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "ops/bf16_amx.hpp"
#include "ops/gemm.hpp"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define INFINI_BF16_KERNEL 1
#include <immintrin.h>

#include "ops/avx512_util.hpp"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, as in sgemm.cpp
#endif
#endif

namespace infini::ops {

namespace {
std::atomic<bool> emulation_forced{false}, avx512_forced{false};
}  // namespace

void bf16_force_emulation(bool on) { emulation_forced.store(on, std::memory_order_relaxed); }
void bf16_force_avx512(bool on) { avx512_forced.store(on, std::memory_order_relaxed); }

bool bf16_amx_active() {
  return bf16_native_available() && amx::supported() &&
         !avx512_forced.load(std::memory_order_relaxed);
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
// Rows [r0, r1) of Y into the pair layout, and (rows non-null) row t also at rows + (t - r0) * ldr.
void convert_pairs_scalar(const float* y, int64_t lda, int64_t r0, int64_t r1, int64_t cols,
                          uint16_t* out, int64_t ldo, uint16_t* rows, int64_t ldr) {
  for (int64_t t = r0; t < r1; ++t) {
    const float* row = y + t * lda;
    uint16_t* o = out + (t / 2) * ldo + t % 2;
    uint16_t* w = rows ? rows + (t - r0) * ldr : nullptr;
    for (int64_t i = 0; i < cols; ++i) {
      o[2 * i] = to_bf16(row[i]);
      if (w) w[i] = o[2 * i];
    }
  }
}
bool convert_pairs_vector(const float* y, int64_t lda, int64_t t0, int64_t t1, int64_t cols,
                          uint16_t* out, int64_t ldo, uint16_t* rows, int64_t ldr);
}  // namespace

void bf16_convert_pairs(const float* y, int64_t lda, int64_t r0, int64_t r1, int64_t cols,
                        uint16_t* out, int64_t ldo, uint16_t* rows, int64_t ldr) {
  if (rows && (ldr % 2 || ldr < cols))
    throw Error("bf16_convert_pairs: ldr must be even and at least cols");
  if (rows && cols % 2)  // the pad of each row's last pair
    for (int64_t t = r0; t < r1; ++t) rows[(t - r0) * ldr + cols] = 0;
  auto rows_at = [&](int64_t t) { return rows ? rows + (t - r0) * ldr : nullptr; };
  // Whole pairs of rows (t even) go as 32-bit words; a row without its partner, alone.
  const int64_t t0 = (r0 + 1) / 2 * 2, t1 = std::max(t0, r1 / 2 * 2);
  if (ldo % 2 || t0 >= t1 ||
      !convert_pairs_vector(y, lda, t0, t1, cols, out, ldo, rows_at(t0), ldr)) {
    convert_pairs_scalar(y, lda, r0, r1, cols, out, ldo, rows, ldr);
    return;
  }
  convert_pairs_scalar(y, lda, r0, t0, cols, out, ldo, rows_at(r0), ldr);
  convert_pairs_scalar(y, lda, t1, r1, cols, out, ldo, rows_at(t1), ldr);
}

void bf16_zero_pair_pad(uint16_t* out, int64_t ldo, int64_t rows, int64_t cols) {
  if (rows % 2 == 0) return;
  uint16_t* pad = out + (rows / 2) * ldo + 1;
  for (int64_t i = 0; i < cols; ++i) pad[2 * i] = 0;
}

#if defined(INFINI_BF16_KERNEL)

namespace {

constexpr int kMR = 12;

// Rows [i0, i0 + rows) of A as bf16, row r at out + r * kp (kp = k rounded up to even,
// the pad zero), so that each 32-bit word is the pair (2p, 2p + 1) the kernel broadcasts.
void convert_rows(const float* a, int64_t lda, int64_t i0, int64_t rows, int64_t k, int64_t kp,
                  uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* o = out + r * kp;
    const float* src = a + (i0 + r) * lda;
    int64_t p = 0;
    for (; p + 32 <= k; p += 32) {
      const __m512bh v =
          _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + p + 16), _mm512_loadu_ps(src + p));
      _mm512_storeu_si512(o + p, (__m512i)v);
    }
    for (; p < k; ++p) o[p] = to_bf16(src[p]);
    if (kp > k) o[k] = 0;
  }
}

// C[0 .. R, 0 .. nv] = alpha * sum_p A[r, pair p] . B[pair p, :] + beta * C. A's pair p of
// row r is the word r * stride + p (rows of pairs) or p * stride + r (Pairs: bf16_convert_pairs),
// stride = lda / 2.
template <int R, bool Pairs>
void micro_kernel(int64_t kpairs, const uint16_t* a, int64_t lda, const uint16_t* bp, float* c,
                  int64_t ldc, float alpha, float beta, int64_t nv) {
  __m512 acc0[R], acc1[R];
  // The tile of C is written (and read, beta != 0) only after the loop: asking for its lines
  // now hides their misses behind the products, where they cost 12% of the kernel's time.
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    acc0[r] = acc1[r] = _mm512_setzero_ps();
    const float* cr = c + r * ldc;
    __builtin_prefetch(cr, 1, 3);
    __builtin_prefetch(cr + nv - 1, 1, 3);
    if (nv > 16) __builtin_prefetch(cr + 16, 1, 3);
  }
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(a);
  const int64_t astride = lda / 2;
  for (int64_t p = 0; p < kpairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(bp + p * 2 * kNR);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(bp + p * 2 * kNR + kNR);
    const uint32_t* ap = Pairs ? a32 + p * astride : a32 + p;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(Pairs ? ap[r] : ap[r * astride]));
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
template <bool Pairs, int... R>
constexpr auto kernel_table(std::integer_sequence<int, R...>) {
  return std::array<Kernel, sizeof...(R)>{&micro_kernel<R + 1, Pairs>...};
}
constexpr auto kKernels = kernel_table<false>(std::make_integer_sequence<int, kMR>{});
constexpr auto kPairKernels = kernel_table<true>(std::make_integer_sequence<int, kMR>{});

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
// sequence of 32-bit pairs column j needs. Tiles of 16 source rows by 16 pairs are transposed
// in registers and stored as 16 contiguous runs of 16 words (one per pair); the borders go word
// by word, 32 words apart.
void pack_columns(int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  const int64_t kpairs = (k + 1) / 2;
  uint32_t* d32 = reinterpret_cast<uint32_t*>(d);
  const int64_t n16 = n / 16 * 16, k32 = k / 32 * 32;  // whole tiles: 16 rows, 32 values each
  for (int64_t j0 = 0; j0 < n16; j0 += 16) {
    uint32_t* panel = d32 + (j0 / kNR) * kpairs * kNR + (j0 % kNR);
    for (int64_t p0 = 0; p0 < k32; p0 += 32) {
      __m512i z[16];
      for (int r = 0; r < 16; ++r) {
        const float* s = b + (j0 + r) * ldb + p0;
        z[r] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
      }
      transpose_16x16_epi32(z);
      for (int c = 0; c < 16; ++c) _mm512_storeu_si512(panel + (p0 / 2 + c) * kNR, z[c]);
    }
  }
  // The rest: the pairs past k32 of the tiled rows, and the rows past n16.
  thread_local std::vector<uint16_t> row;
  row.assign(size_t(2 * kpairs + 32), 0);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t from = j < n16 ? k32 : 0;
    if (from >= k) continue;
    const float* s = b + j * ldb;
    for (int64_t p = from; p < k; ++p) row[size_t(p)] = to_bf16(s[p]);
    if (k % 2) row[size_t(k)] = 0;
    uint32_t* col = d32 + (j / kNR) * kpairs * kNR + (j % kNR);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(row.data());
    for (int64_t pp = from / 2; pp < kpairs; ++pp) col[pp * kNR] = w[pp];
  }
}

void pack_vector(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  if (trans_b)
    pack_columns(k, n, b, ldb, d);
  else
    pack_rows(k, n, b, ldb, d);
}

// Rows t0 .. t1 (t0, t1 even) as pairs: 16 columns of rows t and t + 1 become 16 words,
// stored contiguously in the output row of pair t / 2; with `rows`, the two halves of the same
// conversion also go to rows + (t - t0) * ldr and the row after.
bool convert_pairs_vector(const float* y, int64_t lda, int64_t t0, int64_t t1, int64_t cols,
                          uint16_t* out, int64_t ldo, uint16_t* rows, int64_t ldr) {
  if (!bf16_native_available()) return false;
  const __m512i zip = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out);
  for (int64_t t = t0; t < t1; t += 2) {
    const float* x0 = y + t * lda;
    const float* x1 = x0 + lda;
    uint32_t* o = o32 + (t / 2) * (ldo / 2);
    uint16_t* w0 = rows ? rows + (t - t0) * ldr : nullptr;
    uint16_t* w1 = rows ? w0 + ldr : nullptr;
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
      // Low half: the 16 values of row t; high half: those of row t + 1; then interleaved.
      const __m512i both =
          (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x1 + i), _mm512_loadu_ps(x0 + i));
      _mm512_storeu_si512(o + i, _mm512_permutexvar_epi16(zip, both));
      if (rows) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + i), _mm512_castsi512_si256(both));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + i), _mm512_extracti64x4_epi64(both, 1));
      }
    }
    if (i < cols) {
      const __mmask16 m = first_lanes(cols - i);
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, x1 + i),
                                                        _mm512_maskz_loadu_ps(m, x0 + i));
      _mm512_mask_storeu_epi32(o + i, m, _mm512_permutexvar_epi16(zip, both));
      if (rows) {  // 512-bit masked stores of the low 16 lanes: no AVX512VL needed
        const __mmask32 m32 = m;
        _mm512_mask_storeu_epi16(w0 + i, m32, both);
        _mm512_mask_storeu_epi16(w1 + i, m32,
                                 _mm512_castsi256_si512(_mm512_extracti64x4_epi64(both, 1)));
      }
    }
  }
  return true;
}

// The product over A already in bf16: rows of lda values, pairs adjacent, or (pairs) the
// layout of bf16_convert_pairs.
void gemm_converted_rows(int64_t m, int64_t n, int64_t use_pairs, float alpha, const uint16_t* a,
                         int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc,
                         bool pairs = false) {
  if (bf16_amx_active()) {
    const Bf16Output out{&b, n, beta, c, ldc};
    amx::gemm(m, 2 * use_pairs, alpha,
              {pairs ? amx::AKind::Bf16Pairs : amx::AKind::Bf16Rows, a, lda}, &out, 1);
    return;
  }
  const int64_t kpairs = (b.k + 1) / 2;
  const auto& kernels = pairs ? kPairKernels : kKernels;
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - i0);
    const uint16_t* ai = a + (pairs ? 2 * i0 : i0 * lda);
    for (int64_t j0 = 0; j0 < n; j0 += kNR) {
      const uint16_t* bp = b.data.get() + (j0 / kNR) * kpairs * 2 * kNR;
      kernels[size_t(rows - 1)](use_pairs, ai, lda, bp, c + i0 * ldc + j0, ldc, alpha, beta,
                                std::min<int64_t>(kNR, n - j0));
    }
  }
}

}  // namespace

bool bf16_native_available() {
  static const bool ok =
      __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512bw") != 0;
  return ok && !emulation_forced.load(std::memory_order_relaxed);
}

namespace {
// C_o = alpha * bf16(A) B_o + beta_o C_o for each output: A rounded 12 rows at a time into a
// buffer that every B_o then reads. Only the first k rows of each B take part: the pairs past
// k/2 are skipped, and a pair cut by an odd k meets the zero A pads.
void gemm_rounding_a(int64_t m, int64_t k, float alpha, const float* a, int64_t lda,
                     const Bf16Output* outs, int count) {
  if (bf16_amx_active()) {
    amx::gemm(m, k, alpha, {amx::AKind::F32Rows, a, lda}, outs, count);
    return;
  }
  const int64_t use_pairs = (k + 1) / 2, kp = 2 * use_pairs;
  thread_local std::vector<uint16_t> abuf;
  abuf.resize(size_t(kMR * kp));
  for (int64_t i0 = 0; i0 < m; i0 += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - i0);
    convert_rows(a, lda, i0, rows, k, kp, abuf.data());
    for (int o = 0; o < count; ++o)
      if (outs[o].n > 0)
        gemm_converted_rows(rows, outs[o].n, use_pairs, alpha, abuf.data(), kp, *outs[o].b,
                            outs[o].beta, outs[o].c + i0 * outs[o].ldc, outs[o].ldc);
  }
}
}  // namespace

void bf16_gemm_packed(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                      const PackedBf16& b, float beta, float* c, int64_t ldc) {
  if (!bf16_native_available()) throw Error("bf16_gemm_packed: no AVX512-BF16 on this CPU");
  if (k > b.k || n > b.n) throw Error("bf16_gemm_packed: the product is larger than the packing");
  if (m <= 0 || n <= 0) return;
  const Bf16Output out{&b, n, beta, c, ldc};
  gemm_rounding_a(m, k, alpha, a, lda, &out, 1);
}

void bf16_gemm_packed_shared_a(int64_t m, int64_t k, const float* a, int64_t lda,
                               const Bf16Output* outs, int count) {
  if (!bf16_native_available())
    throw Error("bf16_gemm_packed_shared_a: no AVX512-BF16 on this CPU");
  for (int o = 0; o < count; ++o)
    if (k > outs[o].b->k || outs[o].n > outs[o].b->n)
      throw Error("bf16_gemm_packed_shared_a: product " + std::to_string(o) +
                  " is larger than its packing");
  if (m <= 0) return;
  gemm_rounding_a(m, k, 1.0f, a, lda, outs, count);
}

namespace {
// The arguments of a product over A already in bf16: rows of lda >= k values, or (pairs) the
// layout of bf16_convert_pairs, lda >= 2 m.
void check_converted(const char* who, bool pairs, int64_t m, int64_t n, int64_t k, int64_t lda,
                     const PackedBf16& b) {
  if (!bf16_native_available()) throw Error(std::string(who) + ": no AVX512-BF16 on this CPU");
  if (k > b.k || n > b.n)
    throw Error(std::string(who) + ": the product is larger than the packing");
  if (lda % 2 || lda < (pairs ? 2 * m : k))
    throw Error(std::string(who) + ": lda must be even and at least " + (pairs ? "2 m" : "k"));
}
}  // namespace

void bf16_gemm_converted(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a,
                         int64_t lda, const PackedBf16& b, float beta, float* c, int64_t ldc) {
  check_converted("bf16_gemm_converted", false, m, n, k, lda, b);
  if (m <= 0 || n <= 0) return;
  gemm_converted_rows(m, n, (k + 1) / 2, alpha, a, lda, b, beta, c, ldc);
}

void bf16_gemm_converted_pairs(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t* a,
                               int64_t lda, const PackedBf16& b, float beta, float* c,
                               int64_t ldc) {
  check_converted("bf16_gemm_converted_pairs", true, m, n, k, lda, b);
  if (m <= 0 || n <= 0) return;
  gemm_converted_rows(m, n, (k + 1) / 2, alpha, a, lda, b, beta, c, ldc, /*pairs=*/true);
}

#else  // no AVX512-BF16 in this build

namespace {
void pack_vector(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, uint16_t* d) {
  pack_scalar(trans_b, k, n, b, ldb, d);
}
bool convert_pairs_vector(const float*, int64_t, int64_t, int64_t, int64_t, uint16_t*, int64_t,
                          uint16_t*, int64_t) {
  return false;
}
}  // namespace

bool bf16_native_available() { return false; }

void bf16_gemm_converted(int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
                         const PackedBf16&, float, float*, int64_t) {
  throw Error("bf16_gemm_converted: this build has no AVX512-BF16 kernel");
}

void bf16_gemm_converted_pairs(int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
                               const PackedBf16&, float, float*, int64_t) {
  throw Error("bf16_gemm_converted_pairs: this build has no AVX512-BF16 kernel");
}

void bf16_gemm_packed_shared_a(int64_t, int64_t, const float*, int64_t, const Bf16Output*, int) {
  throw Error("bf16_gemm_packed_shared_a: this build has no AVX512-BF16 kernel");
}

void bf16_gemm_packed(int64_t, int64_t, int64_t, float, const float*, int64_t, const PackedBf16&,
                      float, float*, int64_t) {
  throw Error("bf16_gemm_packed: this build has no AVX512-BF16 kernel");
}

#endif

std::string bf16_backend_name() {
  return bf16_amx_active()        ? "native-amx-bf16"
         : bf16_native_available() ? "native-avx512bf16"
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
  if (trans_a) {
    // A = a^T as pairs of a's rows (bf16_convert_pairs): no transposition, where
    // bf16_gemm_packed would gather A value by value.
    thread_local std::vector<uint16_t> at;
    const int64_t kpairs = (k + 1) / 2;
    at.resize(size_t(kpairs * 2 * m));
    bf16_convert_pairs(a, lda, 0, k, m, at.data(), 2 * m);
    bf16_zero_pair_pad(at.data(), 2 * m, k, m);
    bf16_gemm_converted_pairs(m, n, k, alpha, at.data(), 2 * m, packed, beta, c, ldc);
    return;
  }
  bf16_gemm_packed(m, n, k, alpha, a, lda, packed, beta, c, ldc);
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
