// infini's AVX-512 SGEMM (ops/sgemm.hpp) against a double-precision loop: every transpose,
// sizes on both sides of each tile and block edge, padded leading dimensions, alpha and beta;
// plus the properties the model relies on: beta = 0 never reads C, nothing outside C is
// written, packed and unpacked B give the same bits, and so do any split of rows or columns
// and the threaded entry point.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "ops/gemm.hpp"
#include "ops/sgemm.hpp"

using namespace infini;

namespace {

struct Problem {
  bool ta, tb;
  int64_t m, n, k;
  int64_t lda, ldb, ldc;  // leading dimensions, padded past the minimum
  std::vector<float> a, b, c;

  Problem(bool ta_, bool tb_, int64_t m_, int64_t n_, int64_t k_, unsigned seed, int64_t pad = 3)
      : ta(ta_), tb(tb_), m(m_), n(n_), k(k_) {
    lda = (ta ? m : k) + pad;
    ldb = (tb ? k : n) + pad;
    ldc = n + pad;
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    a.resize(size_t((ta ? k : m) * lda + 1));
    b.resize(size_t((tb ? n : k) * ldb + 1));
    c.resize(size_t(m * ldc + 1));
    for (auto& x : a) x = u(g);
    for (auto& x : b) x = u(g);
    for (auto& x : c) x = u(g);
  }
  float A(int64_t i, int64_t p) const { return ta ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)]; }
  float B(int64_t p, int64_t j) const { return tb ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)]; }
};

// Checks c_out = alpha A B + beta c_in within float rounding of a k-term sum, and that the
// padding of C (columns n .. ldc-1) is untouched.
void expect_matches(const Problem& p, float alpha, float beta, const std::vector<float>& c_in,
                    const std::vector<float>& c_out) {
  int bad = 0;
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      double ref = 0, mag = 0;
      for (int64_t q = 0; q < p.k; ++q) {
        ref += double(p.A(i, q)) * double(p.B(q, j));
        mag += std::fabs(double(p.A(i, q)) * double(p.B(q, j)));
      }
      const double cin = c_in[size_t(i * p.ldc + j)];
      ref = double(alpha) * ref + (beta == 0.0f ? 0.0 : double(beta) * cin);
      mag = std::fabs(double(alpha)) * mag + (beta == 0.0f ? 0.0 : std::fabs(double(beta) * cin));
      const double tol = 2.0 * double(p.k + 2) * 6e-8 * mag + 1e-30;
      const double got = c_out[size_t(i * p.ldc + j)];
      if (!(std::fabs(got - ref) <= tol) && bad++ < 5)
        ADD_FAILURE() << "m=" << p.m << " n=" << p.n << " k=" << p.k << " ta=" << p.ta
                      << " tb=" << p.tb << " C[" << i << "," << j << "] = " << got
                      << ", expected " << ref << " (tolerance " << tol << ")";
    }
    for (int64_t j = p.n; j < p.ldc && i * p.ldc + j < int64_t(c_in.size()); ++j)
      if (c_out[size_t(i * p.ldc + j)] != c_in[size_t(i * p.ldc + j)] && bad++ < 5)
        ADD_FAILURE() << "wrote outside C at row " << i << ", column " << j;
  }
}

void run_native(const Problem& p, float alpha, float beta, std::vector<float>& c) {
  ops::sgemm_native(p.ta, p.tb, p.m, p.n, p.k, alpha, p.a.data(), p.lda, p.b.data(), p.ldb, beta,
                    c.data(), p.ldc);
}

class NativeSgemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::sgemm_native_available()) GTEST_SKIP() << "this build has no AVX-512 kernel";
  }
};

}  // namespace

TEST_F(NativeSgemm, MatchesDoubleLoopAcrossTileAndBlockEdges) {
  // m around the 12-row tile (and the split of a 13..23-row remainder), n around the 32-column
  // panel and the 512-column block, k around the 256-deep block.
  const int64_t ms[] = {1, 5, 11, 12, 13, 16, 23, 24, 25, 37};
  const int64_t ns[] = {1, 15, 16, 17, 31, 32, 33, 70, 530};
  const int64_t ks[] = {1, 2, 16, 17, 255, 256, 257, 600};
  unsigned seed = 1;
  for (int t = 0; t < 4; ++t)
    for (int64_t m : ms)
      for (int64_t n : ns)
        for (int64_t k : ks) {
          // The full cross product is slow in the double loop; take a spread of it.
          if ((m + 3 * n + 7 * k + t) % 5 != 0 && !(n == 530 && k == 257)) continue;
          Problem p(t & 1, t & 2, m, n, k, seed++);
          std::vector<float> c = p.c;
          run_native(p, 0.75f, -0.5f, c);
          expect_matches(p, 0.75f, -0.5f, p.c, c);
        }
}

TEST_F(NativeSgemm, BetaZeroNeverReadsCAndAlphaOrKZeroOnlyScale) {
  for (int t = 0; t < 4; ++t) {
    Problem p(t & 1, t & 2, 29, 45, 70, 100 + t);
    std::vector<float> c(p.c.size(), std::numeric_limits<float>::quiet_NaN());
    for (int64_t i = 0; i < p.m; ++i)  // keep the padding finite: it must stay as it was
      for (int64_t j = p.n; j < p.ldc; ++j) c[size_t(i * p.ldc + j)] = 1.0f;
    const std::vector<float> before = c;
    run_native(p, 1.0f, 0.0f, c);
    expect_matches(p, 1.0f, 0.0f, before, c);

    std::vector<float> c2 = p.c;
    ops::sgemm_native(p.ta, p.tb, p.m, p.n, 0, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 0.5f,
                      c2.data(), p.ldc);
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j)
        ASSERT_EQ(c2[size_t(i * p.ldc + j)], 0.5f * p.c[size_t(i * p.ldc + j)]);
    std::vector<float> c3 = p.c;
    ops::sgemm_native(p.ta, p.tb, p.m, p.n, p.k, 0.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 0.0f,
                      c3.data(), p.ldc);
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) ASSERT_EQ(c3[size_t(i * p.ldc + j)], 0.0f);
  }
}

TEST_F(NativeSgemm, PackedBAndAnySplitOfRowsOrColumnsGiveTheSameBits) {
  for (int t = 0; t < 4; ++t) {
    Problem p(t & 1, t & 2, 50, 600, 300, 200 + t);
    std::vector<float> whole = p.c;
    run_native(p, 1.0f, 1.0f, whole);

    ops::PackedMatrix packed;
    ops::sgemm_pack(p.tb, p.k, p.n, p.b.data(), p.ldb, packed);
    std::vector<float> c = p.c;
    ops::sgemm_native_packed(p.ta, p.m, p.n, p.k, 1.0f, p.a.data(), p.lda, packed, 1.0f, c.data(),
                             p.ldc);
    EXPECT_EQ(c, whole) << "packed B";

    // The first 100 columns of the packed matrix.
    c = p.c;
    ops::sgemm_native_packed(p.ta, p.m, 100, p.k, 1.0f, p.a.data(), p.lda, packed, 1.0f, c.data(),
                             p.ldc);
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.ldc; ++j)
        ASSERT_EQ(c[size_t(i * p.ldc + j)],
                  (j < 100 ? whole : p.c)[size_t(i * p.ldc + j)]) << "prefix of packed columns";

    // The first 200 rows of op(B) (a prefix of k, as a causal attention block uses it): within
    // float rounding of the double loop over those rows.
    {
      Problem shorter = p;
      shorter.k = 200;
      c = p.c;
      ops::sgemm_native_packed(p.ta, p.m, p.n, shorter.k, 1.0f, p.a.data(), p.lda, packed, 1.0f,
                               c.data(), p.ldc);
      expect_matches(shorter, 1.0f, 1.0f, p.c, c);
    }

    // Rows 0..16 and 17..49 separately; columns 0..40 and 41..599 separately.
    c = p.c;
    const int64_t r = 17, cs = 41;
    ops::sgemm_native(p.ta, p.tb, r, p.n, p.k, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f,
                      c.data(), p.ldc);
    ops::sgemm_native(p.ta, p.tb, p.m - r, p.n, p.k, 1.0f, p.a.data() + r * (p.ta ? 1 : p.lda),
                      p.lda, p.b.data(), p.ldb, 1.0f, c.data() + r * p.ldc, p.ldc);
    EXPECT_EQ(c, whole) << "rows split";
    c = p.c;
    ops::sgemm_native(p.ta, p.tb, p.m, cs, p.k, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f,
                      c.data(), p.ldc);
    ops::sgemm_native(p.ta, p.tb, p.m, p.n - cs, p.k, 1.0f, p.a.data(), p.lda,
                      p.b.data() + cs * (p.tb ? p.ldb : 1), p.ldb, 1.0f, c.data() + cs, p.ldc);
    EXPECT_EQ(c, whole) << "columns split";
  }
}

TEST_F(NativeSgemm, ThreadedGemmEqualsOneThread) {
  ASSERT_EQ(ops::gemm_backend(), ops::GemmBackend::Native);
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 4; ++t)
    for (auto [m, n] : {std::pair<int64_t, int64_t>{300, 90}, {40, 700}}) {
      Problem p(t & 1, t & 2, m, n, 200, 300 + t);
      std::vector<float> one = p.c;
      run_native(p, 0.5f, 1.0f, one);
      for (int threads : {2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> c = p.c;
        ops::gemm<float>(p.ta, p.tb, p.m, p.n, p.k, 0.5f, p.a.data(), p.lda, p.b.data(), p.ldb,
                         1.0f, c.data(), p.ldc);
        EXPECT_EQ(c, one) << threads << " threads, m=" << m << " n=" << n;
        ops::PackedMatrix packed;
        ops::sgemm_pack(p.tb, p.k, p.n, p.b.data(), p.ldb, packed);
        c = p.c;
        ops::gemm_packed(p.ta, p.m, p.n, p.k, 0.5f, p.a.data(), p.lda, packed, 1.0f, c.data(),
                         p.ldc);
        EXPECT_EQ(c, one) << threads << " threads, packed, m=" << m << " n=" << n;
      }
    }
  omp_set_num_threads(saved);
}

TEST(GemmBackend, OpenBlasAndNativeAgreeAndTheSwitchIsHonoured) {
  Problem p(false, true, 33, 47, 65, 7);
  std::vector<float> blas = p.c;
  const ops::GemmBackend saved = ops::gemm_backend();
  ops::set_gemm_backend(ops::GemmBackend::OpenBLAS);
  EXPECT_EQ(ops::gemm_backend_name(), "openblas");
  ops::gemm<float>(p.ta, p.tb, p.m, p.n, p.k, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f,
                   blas.data(), p.ldc);
  expect_matches(p, 1.0f, 1.0f, p.c, blas);
  if (ops::sgemm_native_available()) {
    ops::set_gemm_backend(ops::GemmBackend::Native);
    EXPECT_EQ(ops::gemm_backend_name(), "native-avx512");
    std::vector<float> native = p.c;
    ops::gemm<float>(p.ta, p.tb, p.m, p.n, p.k, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f,
                     native.data(), p.ldc);
    expect_matches(p, 1.0f, 1.0f, p.c, native);
  } else {
    EXPECT_THROW(ops::set_gemm_backend(ops::GemmBackend::Native), std::exception);
  }
  ops::set_gemm_backend(saved);
}
