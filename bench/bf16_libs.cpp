// Issue #27's library alternatives: infini's AVX512-BF16 kernel (ops/bf16_gemm.hpp) next to the
// bf16 products of the libraries Debian ships, single-threaded, C[m, n] = bf16(A) bf16(W)^T in
// fp32 with A [m, k] (activations, fp32) and W [n, k] (weights) row-major, as y = x W^T:
//
//   Infini_f32A        bf16_gemm_packed: W packed once in bf16, A fp32 rounded on the fly
//                      (the path the model runs).
//   Infini_bf16A       bf16_gemm_converted: the same with A already bf16.
//   DnnlMatmul_bf16A   oneDNN's matmul primitive, src bf16, weights bf16 in the layout the
//                      primitive picks (format_tag::any, reordered once: its packing), dst f32.
//   DnnlMatmul_f32A    the same plus oneDNN's f32 -> bf16 reorder of src in every iteration.
//   DnnlGemm_bf16A     dnnl_gemm_bf16bf16f32: exported by libdnnl.so 2.6 but absent from its
//                      public headers (declared here); it packs both operands in every call.
//   DnnlGemm_f32A      the same after a vector f32 -> bf16 pass over A in every iteration.
//   Xsmm_bf16A         libxsmm 1.17: W packed once in VNNI layout, one JIT batch-reduce kernel
//                      (libxsmm_bsmmdispatch_reducebatch_strd) per output tile, summing over
//                      the k blocks, as libxsmm's own fully-connected layer does.
//   Xsmm_f32A          the same with each tile row's block of A converted to bf16 on the fly.
//
// OpenBLAS's cblas_sbgemm is declared by Debian's cblas.h but absent from its libopenblas
// (nm -D), so it has no case. Every case is checked against Infini_f32A before it is timed
// (the inputs are bf16-rounded identically, so only the order of the fp32 sums differs:
// max |c - ref| <= 1e-5 max |ref|), and Infini_f32A itself against a float64 product of the
// rounded inputs at sampled entries; a mismatch aborts. Built only where oneDNN is installed
// (CMakeLists.txt: bf16_libs_bench); run with OMP_NUM_THREADS=1 (oneDNN uses OpenMP).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench_util.hpp"
#include "ops/bf16_gemm.hpp"

#if defined(INFINI_WITH_DNNL)
#include <oneapi/dnnl/dnnl.hpp>
// In libdnnl.so (row-major, as dnnl_sgemm) but not in its headers.
extern "C" dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M,
                                               dnnl_dim_t N, dnnl_dim_t K, float alpha,
                                               const uint16_t* A, dnnl_dim_t lda,
                                               const uint16_t* B, dnnl_dim_t ldb, float beta,
                                               float* C, dnnl_dim_t ldc);
#endif
#if defined(INFINI_WITH_LIBXSMM)
#include <libxsmm.h>
#endif

using namespace infini;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "bf16_libs_bench: %s\n", what.c_str());
  std::abort();
}

// f32 -> bf16 (round to nearest even) with VCVTNE2PS2BF16 where the CPU has it.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void convert_avx512(const float* x,
                                                                            uint16_t* y,
                                                                            int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(y + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16),
                                                            _mm512_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] = ops::to_bf16(x[i]);
}
void convert(const float* x, uint16_t* y, int64_t n) {
  if (ops::bf16_native_available()) {
    convert_avx512(x, y, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) y[i] = ops::to_bf16(x[i]);
}

// One shape's inputs (fp32 and their bf16 roundings) and infini's product, the reference.
struct Problem {
  int64_t m, n, k;
  std::vector<float> a, w, ref;
  std::vector<uint16_t> a16, w16;
};

const Problem& problem(int64_t m, int64_t n, int64_t k) {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, std::unique_ptr<Problem>> cache;
  auto& p = cache[{m, n, k}];
  if (p) return *p;
  p = std::make_unique<Problem>();
  p->m = m, p->n = n, p->k = k;
  p->a = bench::random_floats(m * k, 1);
  p->w = bench::random_floats(n * k, 2);
  p->a16.resize(size_t(m * k));
  p->w16.resize(size_t(n * k));
  convert(p->a.data(), p->a16.data(), m * k);
  convert(p->w.data(), p->w16.data(), n * k);
  p->ref.assign(size_t(m * n), 0.0f);
  ops::PackedBf16 wt;
  ops::bf16_pack(true, k, n, p->w.data(), k, wt);
  ops::bf16_gemm_packed(m, n, k, 1.0f, p->a.data(), k, wt, 0.0f, p->ref.data(), n);
  // infini against float64 at 256 sampled entries.
  float scale = 0;
  for (float x : p->ref) scale = std::max(scale, std::fabs(x));
  std::mt19937_64 g(3);
  for (int s = 0; s < 256; ++s) {
    const int64_t i = int64_t(g() % uint64_t(m)), j = int64_t(g() % uint64_t(n));
    double exact = 0;
    for (int64_t q = 0; q < k; ++q)
      exact += double(ops::bf16_value(p->a16[size_t(i * k + q)])) *
               double(ops::bf16_value(p->w16[size_t(j * k + q)]));
    if (std::fabs(exact - p->ref[size_t(i * n + j)]) > 1e-5 * scale)
      fail("infini's bf16 product differs from float64 at (" + std::to_string(i) + ", " +
           std::to_string(j) + ")");
  }
  return *p;
}

// Aborts unless c agrees with infini's product to 1e-5 of its largest magnitude.
void verify(const char* what, const Problem& p, const float* c) {
  float scale = 0, err = 0;
  for (size_t i = 0; i < p.ref.size(); ++i) {
    scale = std::max(scale, std::fabs(p.ref[i]));
    const float d = std::fabs(c[i] - p.ref[i]);
    err = std::isnan(d) ? INFINITY : std::max(err, d);
  }
  if (!(err <= 1e-5f * scale))
    fail(std::string(what) + " differs from infini's product: max |diff| " + std::to_string(err) +
         ", max |ref| " + std::to_string(scale) + " (m " + std::to_string(p.m) + ", n " +
         std::to_string(p.n) + ", k " + std::to_string(p.k) + ")");
}

bool have_bf16(benchmark::State& state) {
  if (ops::bf16_native_available()) return true;
  state.SkipWithError("no AVX512-BF16 on this CPU or build");
  return false;
}

// Args: m, n, k.
void BM_Infini_f32A(benchmark::State& state) {
  if (!have_bf16(state)) return;
  const Problem& p = problem(state.range(0), state.range(1), state.range(2));
  ops::PackedBf16 wt;
  ops::bf16_pack(true, p.k, p.n, p.w.data(), p.k, wt);
  std::vector<float> c(size_t(p.m * p.n), NAN);
  ops::bf16_gemm_packed(p.m, p.n, p.k, 1.0f, p.a.data(), p.k, wt, 0.0f, c.data(), p.n);
  verify("Infini_f32A", p, c.data());
  for (auto _ : state) {
    ops::bf16_gemm_packed(p.m, p.n, p.k, 1.0f, p.a.data(), p.k, wt, 0.0f, c.data(), p.n);
    benchmark::DoNotOptimize(c.data());
  }
  bench::set_flops(state, 2.0 * p.m * p.n * p.k);
}

void BM_Infini_bf16A(benchmark::State& state) {
  if (!have_bf16(state)) return;
  const Problem& p = problem(state.range(0), state.range(1), state.range(2));
  ops::PackedBf16 wt;
  ops::bf16_pack(true, p.k, p.n, p.w.data(), p.k, wt);
  std::vector<float> c(size_t(p.m * p.n), NAN);
  ops::bf16_gemm_converted(p.m, p.n, p.k, 1.0f, p.a16.data(), p.k, wt, 0.0f, c.data(), p.n);
  verify("Infini_bf16A", p, c.data());
  for (auto _ : state) {
    ops::bf16_gemm_converted(p.m, p.n, p.k, 1.0f, p.a16.data(), p.k, wt, 0.0f, c.data(), p.n);
    benchmark::DoNotOptimize(c.data());
  }
  bench::set_flops(state, 2.0 * p.m * p.n * p.k);
}

#if defined(INFINI_WITH_DNNL)

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// src_f32: time the f32 -> bf16 reorder of src with the product.
void dnnl_matmul(benchmark::State& state, bool src_f32) {
  if (!have_bf16(state)) return;
  const Problem& p = problem(state.range(0), state.range(1), state.range(2));
  const dnnl::memory::dim m = p.m, n = p.n, k = p.k;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const dnnl::memory::desc src_md({m, k}, dt::bf16, tag::ab), dst_md({m, n}, dt::f32, tag::ab);
  const dnnl::memory::desc wei_any({k, n}, dt::bf16, tag::any);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_any, dst_md), eng);
  // W [n, k] row-major is the weights {k, n} in format ba; reordered once to bf16 in the
  // primitive's layout.
  dnnl::memory wei_f32({{k, n}, dt::f32, tag::ba}, eng, const_cast<float*>(p.w.data()));
  dnnl::memory wei(pd.weights_desc(), eng);
  dnnl::reorder(wei_f32, wei).execute(s, wei_f32, wei);
  dnnl::memory src_f32m({{m, k}, dt::f32, tag::ab}, eng, const_cast<float*>(p.a.data()));
  dnnl::memory src(src_md, eng);
  const dnnl::reorder to_bf16(src_f32m, src);
  to_bf16.execute(s, src_f32m, src);
  std::vector<float> c(size_t(m * n), NAN);
  dnnl::memory dst(dst_md, eng, c.data());
  const dnnl::matmul mm(pd);
  const std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  mm.execute(s, args);
  s.wait();
  verify(src_f32 ? "DnnlMatmul_f32A" : "DnnlMatmul_bf16A", p, c.data());
  for (auto _ : state) {
    if (src_f32) to_bf16.execute(s, src_f32m, src);
    mm.execute(s, args);
    s.wait();
    benchmark::DoNotOptimize(c.data());
  }
  state.SetLabel(pd.impl_info_str());
  bench::set_flops(state, 2.0 * p.m * p.n * p.k);
}
void BM_DnnlMatmul_bf16A(benchmark::State& state) { dnnl_matmul(state, false); }
void BM_DnnlMatmul_f32A(benchmark::State& state) { dnnl_matmul(state, true); }

// a_f32: A converted to bf16 (the vector conversion above, one pass) in every iteration.
void dnnl_gemm(benchmark::State& state, bool a_f32) {
  if (!have_bf16(state)) return;
  const Problem& p = problem(state.range(0), state.range(1), state.range(2));
  std::vector<float> c(size_t(p.m * p.n), NAN);
  std::vector<uint16_t> a16(p.a16);
  auto run = [&] {
    if (a_f32) convert(p.a.data(), a16.data(), p.m * p.k);
    if (dnnl_gemm_bf16bf16f32('N', 'T', p.m, p.n, p.k, 1.0f, a16.data(), p.k, p.w16.data(), p.k,
                              0.0f, c.data(), p.n) != dnnl_success)
      fail("dnnl_gemm_bf16bf16f32 failed");
  };
  run();
  verify(a_f32 ? "DnnlGemm_f32A" : "DnnlGemm_bf16A", p, c.data());
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(c.data());
  }
  bench::set_flops(state, 2.0 * p.m * p.n * p.k);
}
void BM_DnnlGemm_bf16A(benchmark::State& state) { dnnl_gemm(state, false); }
void BM_DnnlGemm_f32A(benchmark::State& state) { dnnl_gemm(state, true); }

#endif  // INFINI_WITH_DNNL

#if defined(INFINI_WITH_LIBXSMM)

// libxsmm is column-major: row-major C [m, n] = A W^T is column-major C' [n, m] = W' A', where
// A' (k x m, ld k) is A row-major as it stands and W' (n x k) is W transposed. libxsmm 1.17's
// bf16 kernels take their first operand in VNNI layout (pairs of k adjacent), so W' is packed
// once: per tile of BM output columns and block of BK of k, the block [BK / 2][BM][2]
// contiguous, the blocks of one tile BM * BK apart (the stride the batch-reduce kernel steps
// by). One kernel call sums count = k / BK block products into one BM x BN tile of C', beta 0.
struct XsmmGemm {
  // Tile sizes: BM = 64 columns of C (four 16-float vectors), BN = 64 rows, BK = 256. Those
  // tried (BM 32-128, BN 32-256, BK 64 to all of k) came within 5% of each other, the noise
  // here; INFINI_XSMM_TILE=BM,BN,BK tries others.
  int64_t tile_m = 64, tile_n = 64, tile_k = 256;
  int64_t m = 0, n = 0, k = 0, bk = 0;
  std::vector<uint16_t> wpack;
  std::map<std::pair<int64_t, int64_t>, libxsmm_bsmmfunction_reducebatch_strd> kernels;

  // The kernel for a bm x bn tile (its A block's leading dimension is bm).
  libxsmm_bsmmfunction_reducebatch_strd kernel(int64_t bm, int64_t bn) {
    auto& f = kernels[{bm, bn}];
    if (!f) {
      const libxsmm_blasint lda = bm, ldb = k, ldc = n;
      const float alpha = 1.0f, beta = 0.0f;
      const int flags = LIBXSMM_GEMM_FLAG_VNNI_A;
      f = libxsmm_bsmmdispatch_reducebatch_strd(bm, bn, bk, bk * bm * 2, bk * 2, &lda, &ldb,
                                                &ldc, &alpha, &beta, &flags, nullptr);
      if (!f) fail("libxsmm_bsmmdispatch_reducebatch_strd returned no kernel");
    }
    return f;
  }

  XsmmGemm(const Problem& p) : m(p.m), n(p.n), k(p.k) {
    if (const char* t = std::getenv("INFINI_XSMM_TILE")) {
      long bm = 0, bn = 0, bkk = 0;
      if (std::sscanf(t, "%ld,%ld,%ld", &bm, &bn, &bkk) != 3 || bm <= 0 || bn <= 0 || bkk <= 0)
        fail("INFINI_XSMM_TILE must be BM,BN,BK");
      tile_m = bm, tile_n = bn, tile_k = bkk;
    }
    bk = std::min(tile_k, k);
    if (k % bk || bk % 2) fail("libxsmm case: k must be a multiple of its block");
    wpack.assign(size_t(n * k), 0);
    // Tile j0 (width bm) starts at j0 * k; its block q0 at + q0 * bm.
    for (int64_t j0 = 0; j0 < n; j0 += tile_m) {
      const int64_t bm = std::min(tile_m, n - j0);
      uint16_t* tile = wpack.data() + j0 * k;
      for (int64_t q0 = 0; q0 < k; q0 += bk)
        for (int64_t q = 0; q < bk; ++q)
          for (int64_t j = 0; j < bm; ++j)
            tile[q0 * bm + (q / 2) * bm * 2 + j * 2 + q % 2] =
                p.w16[size_t((j0 + j) * k + q0 + q)];
    }
    for (int64_t i0 = 0; i0 < m; i0 += tile_n)
      for (int64_t j0 = 0; j0 < n; j0 += tile_m) kernel(std::min(tile_m, n - j0), std::min(tile_n, m - i0));
  }

  // c = a16 W^T, a16 [m, k] bf16 row-major. With a32, each BN-row block of A is first
  // converted into a16 (a BN x k buffer then), as infini converts A on the fly.
  void run(const uint16_t* a16, const float* a32, uint16_t* buf, float* c) {
    const unsigned long long count = (unsigned long long)(k / bk);
    for (int64_t i0 = 0; i0 < m; i0 += tile_n) {
      const int64_t bn = std::min(tile_n, m - i0);
      const uint16_t* ab = a16 + i0 * k;
      if (a32) {
        convert(a32 + i0 * k, buf, bn * k);
        ab = buf;
      }
      for (int64_t j0 = 0; j0 < n; j0 += tile_m) {
        const int64_t bm = std::min(tile_m, n - j0);
        kernel(bm, bn)(reinterpret_cast<const libxsmm_bfloat16*>(wpack.data() + j0 * k),
                       reinterpret_cast<const libxsmm_bfloat16*>(ab), c + i0 * n + j0, &count);
      }
    }
  }
};

void xsmm(benchmark::State& state, bool a_f32) {
  if (!have_bf16(state)) return;
  const Problem& p = problem(state.range(0), state.range(1), state.range(2));
  libxsmm_init();
  XsmmGemm g(p);
  std::vector<float> c(size_t(p.m * p.n), NAN);
  std::vector<uint16_t> buf(size_t(g.tile_n * p.k));
  const float* a32 = a_f32 ? p.a.data() : nullptr;
  g.run(p.a16.data(), a32, buf.data(), c.data());
  verify(a_f32 ? "Xsmm_f32A" : "Xsmm_bf16A", p, c.data());
  for (auto _ : state) {
    g.run(p.a16.data(), a32, buf.data(), c.data());
    benchmark::DoNotOptimize(c.data());
  }
  state.SetLabel(std::string("libxsmm ") + libxsmm_get_target_arch() + " tile " +
                 std::to_string(g.tile_m) + "x" + std::to_string(g.tile_n) + "x" + std::to_string(g.bk));
  bench::set_flops(state, 2.0 * p.m * p.n * p.k);
}
void BM_Xsmm_bf16A(benchmark::State& state) { xsmm(state, false); }
void BM_Xsmm_f32A(benchmark::State& state) { xsmm(state, true); }

#endif  // INFINI_WITH_LIBXSMM

// The square product, the model's products at 512 and 2048 rows (bench_small / bench_medium:
// k = d = 256 / 512, n = 704 / 1408 the MLP, 4096 a vocabulary-sized output), and a
// weight-gradient-like product (few output columns, long k).
void Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k"});
  b->Args({1024, 1024, 1024});
  for (int64_t m : {512, 2048})
    for (int64_t k : {256, 512})
      for (int64_t n : {704, 1408, 4096}) b->Args({m, n, k});
  b->Args({704, 128, 512});
  b->UseRealTime();
}

}  // namespace

BENCHMARK(BM_Infini_f32A)->Apply(Shapes);
BENCHMARK(BM_Infini_bf16A)->Apply(Shapes);
#if defined(INFINI_WITH_DNNL)
BENCHMARK(BM_DnnlMatmul_bf16A)->Apply(Shapes);
BENCHMARK(BM_DnnlMatmul_f32A)->Apply(Shapes);
BENCHMARK(BM_DnnlGemm_bf16A)->Apply(Shapes);
BENCHMARK(BM_DnnlGemm_f32A)->Apply(Shapes);
#endif
#if defined(INFINI_WITH_LIBXSMM)
BENCHMARK(BM_Xsmm_bf16A)->Apply(Shapes);
BENCHMARK(BM_Xsmm_f32A)->Apply(Shapes);
#endif
BENCHMARK_MAIN();
