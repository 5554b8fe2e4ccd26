// ops/bf16_gemm: rounding to bf16, and the bf16-input fp32-accumulate products (native
// AVX512-BF16 kernel where the CPU has it, and the emulation everywhere) against a float64
// reference of the bf16-rounded inputs.
#include "ops/bf16_gemm.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "util/bf16_emulation.hpp"

using namespace infini::ops;
using infini::testing::for_each_native_bf16_kernel;

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::vector<float> random_matrix(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// C = alpha * bf16(op(A)) bf16(op(B)) + beta * C in float64; bound: the size of the sum.
void reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
               const std::vector<float>& a, int64_t lda, const std::vector<float>& b, int64_t ldb,
               double beta, std::vector<double>& c, std::vector<double>& bound, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, s_abs = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = round_bf16(ta ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)]);
        const double y = round_bf16(tb ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)]);
        s += x * y;
        s_abs += std::abs(x * y);
      }
      const size_t at = size_t(i * ldc + j);
      c[at] = alpha * s + beta * c[at];
      bound[at] = std::abs(alpha) * s_abs + std::abs(beta * c[at]);
    }
}

using Gemm = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                      const float*, int64_t, float, float*, int64_t);

void check_shapes(Gemm gemm, const char* name) {
  // AMX blocks of 32 rows (two tiles of 16), panels of 32 columns (two tiles), k blocks of 32
  // values: shapes on both sides of each, a k tail of every parity, and k = 0.
  const int64_t shapes[][3] = {{1, 1, 1},    {3, 5, 7},    {12, 32, 64},   {13, 33, 65},
                               {25, 70, 31}, {7, 16, 300}, {40, 100, 128}, {16, 16, 32},
                               {17, 17, 33}, {33, 48, 95}, {64, 64, 200},  {70, 9, 1},
                               {33, 40, 0}};
  uint64_t seed = 1;
  for (const auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (const auto& [alpha, beta] : {std::pair<float, float>{1.25f, 0.0f},
                                          {1.25f, 0.5f},
                                          {1.0f, 0.0f},     // AMX: whole tiles straight to C
                                          {1.0f, 1.0f}}) {  // ... starting from C
          const int64_t m = s[0], n = s[1], k = s[2];
          const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
          const auto a = random_matrix((ta ? k : m) * lda, seed++);
          const auto b = random_matrix((tb ? n : k) * ldb, seed++);
          std::vector<float> c = random_matrix(m * ldc, seed++);
          std::vector<double> want(c.begin(), c.end()), bound(c.size(), 0.0);
          reference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, want, bound, ldc);
          if (beta == 0.0f)  // beta 0 must not read C, even NaN
            for (int64_t i = 0; i < m; ++i) c[size_t(i * ldc)] = std::nanf("");
          gemm(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              const size_t at = size_t(i * ldc + j);
              // fp32 sums of exact products: error within k * 2^-24 of the sum of magnitudes.
              ASSERT_NEAR(c[at], want[at], 1e-7 * double(k + 2) * bound[at] + 1e-30)
                  << name << " m=" << m << " n=" << n << " k=" << k << " ta=" << ta << " tb=" << tb
                  << " alpha=" << alpha << " beta=" << beta << " at " << i << "," << j;
            }
        }
}

}  // namespace

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(to_bf16(from_bits(0x3F808000u)), 0x3F80);  // a tie: to the even mantissa
  EXPECT_EQ(to_bf16(from_bits(0x3F818000u)), 0x3F82);  // a tie: up to the even one
  EXPECT_EQ(to_bf16(from_bits(0x3F808001u)), 0x3F81);  // above the tie: up
  EXPECT_EQ(to_bf16(from_bits(0x3F807FFFu)), 0x3F80);  // below: down
  EXPECT_EQ(to_bf16(from_bits(0x7F7FFFFFu)), 0x7F80);  // the largest float rounds to inf
  EXPECT_EQ(to_bf16(INFINITY), 0x7F80);
  EXPECT_TRUE(std::isnan(bf16_value(to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_value(to_bf16(from_bits(0x7F800001u)))));  // not inf
  EXPECT_EQ(round_bf16(3.140625f), 3.140625f);                           // exactly representable
}

TEST(Bf16, EmulatedProductMatchesTheFloat64ReferenceOfRoundedInputs) {
  check_shapes(&bf16_gemm_emulated, "emulated");
}

TEST(Bf16, NativeProductMatchesTheFloat64ReferenceOfRoundedInputs) {
  if (!bf16_native_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  for_each_native_bf16_kernel([](const char* name) { check_shapes(&bf16_gemm, name); });
}

TEST(Bf16, PackedPrefixOfKAndNEqualsAProductOfThatSize) {
  if (!bf16_native_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  for_each_native_bf16_kernel([](const char* name) {
    const int64_t m = 9, n = 50, k = 41;
    const auto a = random_matrix(m * k, 11), b = random_matrix(k * n, 12);
    PackedBf16 packed;
    bf16_pack(false, k, n, b.data(), n, packed);
    for (const int64_t kk : {int64_t(1), int64_t(20), int64_t(33), k})
      for (const int64_t nn : {int64_t(1), int64_t(31), int64_t(33), n}) {
        std::vector<float> got(size_t(m * nn)), want(size_t(m * nn));
        bf16_gemm_packed(m, nn, kk, 1.0f, a.data(), k, packed, 0.0f, got.data(), nn);
        bf16_gemm(false, false, m, nn, kk, 1.0f, a.data(), k, b.data(), n, 0.0f, want.data(), nn);
        EXPECT_EQ(got, want) << name << " k=" << kk << " n=" << nn;
      }
  });
}

TEST(Bf16, SharedAEqualsOneProductPerB) {
  // q, k, v of a layer: one A (45 rows: three 12-row blocks and a tail; an AMX block of 32 and
  // one of 13) against three packed weights of different widths, one added to what C held (a
  // bias), one overwritten.
  if (!bf16_native_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  for_each_native_bf16_kernel([](const char* name) {
    const int64_t m = 45, k = 45, lda = 50;
    const auto a = random_matrix(m * lda, 41);
    const int64_t widths[3] = {64, 33, 7};
    PackedBf16 packs[3];
    std::vector<float> got[3], want[3];
    Bf16Output outs[3];
    for (int o = 0; o < 3; ++o) {
      const auto w = random_matrix(widths[o] * k, uint64_t(42 + o));
      bf16_pack(true, k, widths[o], w.data(), k, packs[o]);
      got[o] = want[o] = random_matrix(m * widths[o], uint64_t(50 + o));
      const float beta = o == 1 ? 1.0f : 0.0f;
      outs[o] = {&packs[o], widths[o], beta, got[o].data(), widths[o]};
      bf16_gemm_packed(m, widths[o], k, 1.0f, a.data(), lda, packs[o], beta, want[o].data(),
                       widths[o]);
    }
    bf16_gemm_packed_shared_a(m, k, a.data(), lda, outs, 3);
    for (int o = 0; o < 3; ++o) EXPECT_EQ(got[o], want[o]) << name << " output " << o;
  });
}

TEST(Bf16, VectorPackingEqualsTheScalarOneInBothOrientations) {
  // Odd k (a pad row), n not a multiple of 32, a leading dimension wider than the matrix; for
  // the transposed B, whole 16 x 32 register tiles and their borders on both sides.
  for (const auto& [k, n] :
       {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {64, 64}, {65, 100}, {100, 48}}) {
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t ldb = (tb ? k : n) + 5;
      const auto b = random_matrix((tb ? n : k) * ldb, uint64_t(100 + k + n + tb));
      PackedBf16 fast, plain;
      // A buffer that held a larger matrix first: the padding must be rewritten, not assumed.
      const auto junk = random_matrix((k + 2) * (n + 40), 99);
      bf16_pack(false, k + 2, n + 40, junk.data(), n + 40, fast);
      bf16_pack(tb, k, n, b.data(), ldb, fast);
      bf16_pack_scalar(tb, k, n, b.data(), ldb, plain);
      ASSERT_GE(fast.capacity, plain.capacity);
      EXPECT_EQ(std::memcmp(fast.data.get(), plain.data.get(), plain.bytes()), 0)
          << "k=" << k << " n=" << n << " trans_b=" << tb;
    }
  }
}

TEST(Bf16, PairConvertedAEqualsTheProductThatConvertsOnTheFly) {
  if (!bf16_native_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  for_each_native_bf16_kernel([](const char* name) {
    // dW [out, w] = dY^T [out, r] X [r, w], dY converted in two row ranges as two threads would.
    const int64_t r = 37, out = 29, w = 45, ldo = 2 * out + 4;  // odd r: the pad row is zero
    const auto dy = random_matrix(r * out, 21), x = random_matrix(r * w, 22);
    const int64_t pairs = (r + 1) / 2;
    std::vector<uint16_t> dyt(size_t(pairs * ldo), 0xFFFF);
    bf16_zero_pair_pad(dyt.data(), ldo, r, out);
    for (int64_t i = 0; i < out; ++i) ASSERT_EQ(dyt[size_t((pairs - 1) * ldo + 2 * i + 1)], 0);
    bf16_convert_pairs(dy.data(), out, 0, 17, out, dyt.data(), ldo);
    bf16_convert_pairs(dy.data(), out, 17, r, out, dyt.data(), ldo);
    for (int64_t t = 0; t < r; ++t)
      for (int64_t i = 0; i < out; ++i)
        ASSERT_EQ(dyt[size_t((t / 2) * ldo + 2 * i + t % 2)], to_bf16(dy[size_t(t * out + i)]));
    PackedBf16 xp;
    bf16_pack(false, r, w, x.data(), w, xp);
    std::vector<float> got(size_t(out * w), 1.0f), want(got);
    bf16_gemm_converted_pairs(out, w, r, 1.0f, dyt.data(), ldo, xp, 1.0f, got.data(), w);
    // The oracle: the row-layout product of dY^T transposed in memory, same rounding, same sums.
    std::vector<float> dyt_rows(size_t(out * r));
    for (int64_t t = 0; t < r; ++t)
      for (int64_t i = 0; i < out; ++i) dyt_rows[size_t(i * r + t)] = dy[size_t(t * out + i)];
    bf16_gemm_packed(out, w, r, 1.0f, dyt_rows.data(), r, xp, 1.0f, want.data(), w);
    EXPECT_EQ(got, want) << name;
    // bf16_gemm's transposed A goes the same way: the same bits, for odd and even k.
    for (const int64_t k : {r, r - 1}) {
      std::vector<float> via(size_t(out * w), 1.0f), direct(via);
      bf16_gemm(true, false, out, w, k, 1.0f, dy.data(), out, x.data(), w, 1.0f, via.data(), w);
      PackedBf16 xk;
      bf16_pack(false, k, w, x.data(), w, xk);
      bf16_gemm_packed(out, w, k, 1.0f, dyt_rows.data(), r, xk, 1.0f, direct.data(), w);
      EXPECT_EQ(via, direct) << name << " k=" << k;
    }
  });
}

TEST(Bf16, PairConversionOfAnyRowRangeEqualsTheScalarRounding) {
  // Ranges starting and ending on odd rows (a row without its partner), columns not a multiple
  // of 16, as threads owning uneven shares of the rows produce them; the vector code and (the
  // emulation forced) the scalar code a CPU without AVX512-BF16 runs.
  for (const bool emulate : {false, true}) {
    const infini::testing::ForcedBf16Emulation emulation(emulate);
    for (const auto& [r, cols] : {std::pair<int64_t, int64_t>{23, 37}, {75, 53}, {64, 32}}) {
      const int64_t lda = cols + 3, ldo = 2 * cols + 6;
      const auto a = random_matrix(r * lda, 31);
      for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{0, r},
                                   {1, r - 1},
                                   {3, 4},
                                   {5, 5},
                                   {2, std::min<int64_t>(r, 66)}}) {
        // The same call also writing the rows (from r0, ldr = cols rounded up to even + 2).
        const int64_t ldr = (cols + 1) / 2 * 2 + 2;
        std::vector<uint16_t> out(size_t((r + 1) / 2 * ldo), 0x1234), out_too(out);
        std::vector<uint16_t> rows(size_t(std::max<int64_t>(r1 - r0, 1) * ldr), 0x1234);
        bf16_convert_pairs(a.data(), lda, r0, r1, cols, out.data(), ldo);
        bf16_convert_pairs(a.data(), lda, r0, r1, cols, out_too.data(), ldo, rows.data(), ldr);
        ASSERT_EQ(out, out_too);
        for (int64_t t = 0; t < (r + 1) / 2 * 2; ++t)
          for (int64_t j = 0; j < ldo / 2; ++j) {
            // Word j of pair t / 2: column j, half t % 2; words past cols are never written.
            const uint16_t got = out[size_t((t / 2) * ldo + 2 * j + t % 2)];
            const bool written = t >= r0 && t < r1 && j < cols;
            const uint16_t want = written ? to_bf16(a[size_t(t * lda + j)]) : 0x1234;
            ASSERT_EQ(got, want) << r << "x" << cols << ", rows " << r0 << ".." << r1 << " at " << t
                                 << "," << j;
          }
        for (int64_t t = r0; t < r1; ++t)
          for (int64_t j = 0; j < ldr; ++j) {
            // Row t - r0: the values, a zero pad after an odd cols, the rest untouched.
            const uint16_t want = j < cols                     ? to_bf16(a[size_t(t * lda + j)])
                                  : j == cols && cols % 2 == 1 ? 0
                                                               : 0x1234;
            ASSERT_EQ(rows[size_t((t - r0) * ldr + j)], want)
                << r << "x" << cols << ", rows " << r0 << ".." << r1 << " at " << t << "," << j;
          }
      }
    }
  }
}

TEST(Bf16, AWideBTakenInPiecesEqualsTheReference) {
  // k = 1000: the AMX kernel takes B in pieces of 512 columns (1 MiB of packing each), so
  // n = 1100 is three pieces, and three outputs of one A group and split across pieces.
  if (!bf16_native_available()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  for_each_native_bf16_kernel([](const char* name) {
    const int64_t m = 40, k = 1000, widths[3] = {1100, 600, 40};
    const auto a = random_matrix(m * k, 61);
    PackedBf16 packs[3];
    std::vector<float> b[3], got[3], each[3];
    Bf16Output outs[3];
    for (int o = 0; o < 3; ++o) {
      const int64_t n = widths[o];
      b[o] = random_matrix(k * n, uint64_t(62 + o));
      bf16_pack(false, k, n, b[o].data(), n, packs[o]);
      got[o] = each[o] = random_matrix(m * n, uint64_t(70 + o));
      outs[o] = {&packs[o], n, o == 1 ? 1.0f : 0.0f, got[o].data(), n};
      bf16_gemm_packed(m, n, k, 1.0f, a.data(), k, packs[o], outs[o].beta, each[o].data(), n);
    }
    std::vector<double> want(each[0].size()), bound(each[0].size(), 0.0);
    reference(false, false, m, widths[0], k, 1.0, a, k, b[0], widths[0], 0.0, want, bound,
              widths[0]);
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(each[0][i], want[i], 1e-7 * double(k + 2) * bound[i] + 1e-30) << name << " " << i;
    bf16_gemm_packed_shared_a(m, k, a.data(), k, outs, 3);
    for (int o = 0; o < 3; ++o) EXPECT_EQ(got[o], each[o]) << name << " output " << o;
  });
}
