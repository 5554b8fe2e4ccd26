// Every op's backward against central finite differences in double precision, and the BLAS
// GEMM against the plain loop. Each loss is a random projection L = sum_i w_i out_i.
#include <limits>

#include <gtest/gtest.h>

#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/gemm.hpp"
#include "ops/memory.hpp"
#include "ops/norm.hpp"
#include "ops/rope.hpp"
#include "util/gradcheck.hpp"
#include "util/nan_max.hpp"

using namespace infini;
using namespace infini::testing;

constexpr double kTol = 1e-6;

TEST(Gemm, BlasMatchesReferenceAllTransposes) {
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t m = 7, n = 5, k = 9;
      auto a = random_vec(m * k, 1), b = random_vec(k * n, 2), c1 = random_vec(m * n, 3);
      auto c2 = c1;
      std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), cf(c1.begin(), c1.end());
      const int64_t lda = ta ? m : k, ldb = tb ? k : n;
      ops::gemm<double>(ta, tb, m, n, k, 0.7, a.data(), lda, b.data(), ldb, 0.3, c1.data(), n);
      ops::gemm_reference<double>(ta, tb, m, n, k, 0.7, a.data(), lda, b.data(), ldb, 0.3,
                                  c2.data(), n);
      ops::gemm<float>(ta, tb, m, n, k, 0.7f, af.data(), lda, bf.data(), ldb, 0.3f, cf.data(), n);
      EXPECT_LT(rel_err(c1, c2), 1e-12);
      std::vector<double> cfd(cf.begin(), cf.end());
      EXPECT_LT(rel_err(cfd, c2), 1e-5);
    }
}

TEST(Linear, Backward) {
  const int64_t rows = 4, in = 5, out = 3;
  auto x = random_vec(rows * in, 1), w = random_vec(out * in, 2), b = random_vec(out, 3);
  auto proj = random_vec(rows * out, 4);
  std::vector<double> y(rows * out);
  auto f = [&] {
    ops::linear_forward(y.data(), x.data(), w.data(), b.data(), rows, in, out);
    return dot(proj, y.data());
  };
  std::vector<double> dx(rows * in, 5.0), dw(out * in, 0.0), db(out, 0.0);
  ops::linear_backward(dx.data(), dw.data(), db.data(), proj.data(), x.data(), w.data(), rows, in,
                       out, false);
  EXPECT_LT(rel_err(dx, numeric_grad(f, x)), kTol);
  EXPECT_LT(rel_err(dw, numeric_grad(f, w)), kTol);
  EXPECT_LT(rel_err(db, numeric_grad(f, b)), kTol);
  // accumulate = true adds onto what is there
  std::vector<double> dx2(rows * in, 1.0);
  ops::linear_backward(dx2.data(), (double*)nullptr, (double*)nullptr, proj.data(), x.data(),
                       w.data(), rows, in, out, true);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx2[i], dx[i] + 1.0, 1e-12);
}

TEST(RmsNorm, Backward) {
  const int64_t rows = 3, dim = 6;
  auto x = random_vec(rows * dim, 1), w = random_vec(dim, 2), proj = random_vec(rows * dim, 3);
  std::vector<double> y(rows * dim), rstd(rows);
  auto f = [&] {
    ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-5);
    return dot(proj, y.data());
  };
  f();
  std::vector<double> dx(rows * dim), dw(dim, 0.0);
  ops::rmsnorm_backward(dx.data(), dw.data(), proj.data(), x.data(), rstd.data(), w.data(), rows,
                        dim, false);
  EXPECT_LT(rel_err(dx, numeric_grad(f, x)), kTol);
  EXPECT_LT(rel_err(dw, numeric_grad(f, w)), kTol);
}

TEST(Rope, InverseIsBackwardAndRotatesPairs) {
  const int64_t rows = 5, heads = 2, d = 8;
  ops::RopeTable<double> table(d, 16, 10000.0);
  std::vector<int32_t> pos = {0, 3, 7, 1, 15};
  auto x = random_vec(rows * heads * d, 1), proj = random_vec(rows * heads * d, 2);
  std::vector<double> y;
  auto f = [&] {
    y = x;
    ops::rope_apply(y.data(), rows, heads, pos.data(), table, false);
    return dot(proj, y.data());
  };
  f();
  // Position 0 is the identity; norms are preserved per pair.
  for (int64_t j = 0; j < heads * d; ++j) EXPECT_NEAR(y[j], x[j], 1e-15);
  auto g = proj;
  ops::rope_apply(g.data(), rows, heads, pos.data(), table, true);
  EXPECT_LT(rel_err(g, numeric_grad(f, x)), kTol);
  // Known angle: row 1 (p = 3), pair i = 1 rotates by 3 * 10000^(-2/8).
  const double ang = 3 * std::pow(10000.0, -2.0 / 8.0);
  const double a = x[1 * heads * d + 1], b = x[1 * heads * d + 1 + d / 2];
  EXPECT_NEAR(y[1 * heads * d + 1], a * std::cos(ang) - b * std::sin(ang), 1e-12);
  EXPECT_NEAR(y[1 * heads * d + 1 + d / 2], b * std::cos(ang) + a * std::sin(ang), 1e-12);
}

TEST(Rope, OutOfPlaceEqualsInPlaceAndLeavesTheSource) {
  const int64_t rows = 5, heads = 3, d = 16;
  ops::RopeTable<float> table(d, 32, 10000.0);
  std::vector<int32_t> pos = {4, 0, 31, 9, 2};
  std::vector<float> x(rows * heads * d);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.37 * double(i) + 1.0));
  for (bool inverse : {false, true}) {
    auto in_place = x;
    ops::rope_apply(in_place.data(), rows, heads, pos.data(), table, inverse);
    std::vector<float> out(x.size(), -7.0f);
    const auto source = x;
    ops::rope_apply(out.data(), source.data(), rows, heads, pos.data(), table, inverse);
    EXPECT_EQ(out, in_place);
    EXPECT_EQ(source, x);
    EXPECT_NE(out, x);  // it did rotate (positions other than 0)
  }
}

TEST(SwiGlu, Backward) {
  const int64_t n = 17;
  auto gt = random_vec(n, 1, 2.0), up = random_vec(n, 2), proj = random_vec(n, 3);
  std::vector<double> y(n);
  auto f = [&] {
    ops::swiglu_forward(y.data(), gt.data(), up.data(), n);
    return dot(proj, y.data());
  };
  std::vector<double> dg(n), du(n);
  ops::swiglu_backward(dg.data(), du.data(), proj.data(), gt.data(), up.data(), n);
  EXPECT_LT(rel_err(dg, numeric_grad(f, gt)), kTol);
  EXPECT_LT(rel_err(du, numeric_grad(f, up)), kTol);
}

TEST(GateMix, Backward) {
  const int64_t rows = 3, heads = 2, d = 4;
  auto mem = random_vec(rows * heads * d, 1), loc = random_vec(rows * heads * d, 2);
  auto beta = random_vec(heads, 3), proj = random_vec(rows * heads * d, 4);
  std::vector<double> y(rows * heads * d);
  auto f = [&] {
    ops::gate_mix_forward(y.data(), mem.data(), loc.data(), beta.data(), rows, heads, d);
    return dot(proj, y.data());
  };
  std::vector<double> dm(mem.size()), dl(loc.size()), db(heads, 0.0);
  ops::gate_mix_backward(dm.data(), dl.data(), db.data(), proj.data(), mem.data(), loc.data(),
                         beta.data(), rows, heads, d);
  EXPECT_LT(rel_err(dm, numeric_grad(f, mem)), kTol);
  EXPECT_LT(rel_err(dl, numeric_grad(f, loc)), kTol);
  EXPECT_LT(rel_err(db, numeric_grad(f, beta)), kTol);
}

TEST(CrossEntropy, BackwardAndIgnoredRows) {
  const int64_t rows = 4, V = 7;
  auto logits = random_vec(rows * V, 1, 2.0);
  std::vector<int32_t> tgt = {3, -1, 0, 6};
  auto f = [&] { return ops::cross_entropy<double>(logits.data(), tgt.data(), rows, V, nullptr, 0); };
  std::vector<double> dl(rows * V);
  ops::cross_entropy<double>(logits.data(), tgt.data(), rows, V, dl.data(), 1.0);
  EXPECT_LT(rel_err(dl, numeric_grad(f, logits)), kTol);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dl[V + j], 0.0);
  // Uniform logits: loss is log V per row.
  std::vector<double> zero(rows * V, 0.0);
  EXPECT_NEAR(ops::cross_entropy<double>(zero.data(), tgt.data(), rows, V, nullptr, 0),
              3 * std::log(7.0), 1e-12);
}

TEST(TestHarness, NaNsAreNeverAMatch) {
  // The comparisons every test here relies on must fail on NaN (std::max silently drops it).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_FALSE(rel_err({1.0, nan, 2.0}, {1.0, 0.0, 2.0}) < 1.0);
  EXPECT_FALSE(rel_err({1.0, 0.0}, {nan, 0.0}) < 1.0);
  EXPECT_FALSE(rel_err({1.0}, {1.0, 2.0}) < 1.0);
  double worst = 0;
  for (double x : {0.5, nan, 0.25, 2.0}) worst = nan_max(worst, x);
  EXPECT_TRUE(std::isnan(worst));
  EXPECT_EQ(nan_max(nan_max(0.0, 0.5), 0.25), 0.5);
}

struct AttnCase {
  int64_t B, n, H, Hkv, d;
};

class AttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionTest, BackwardAndCausality) {
  const auto c = GetParam();
  const int64_t qw = c.H * c.d, kw = c.Hkv * c.d, r = c.B * c.n;
  const ops::AttentionShape s{c.B, c.n, 0, c.n, c.H, c.Hkv, c.d};
  auto q = random_vec(r * qw, 1), k = random_vec(r * kw, 2), v = random_vec(r * kw, 3);
  auto proj = random_vec(r * qw, 4);
  std::vector<double> out(r * qw), probs(c.B * c.H * c.n * c.n);
  auto f = [&] {
    ops::local_attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
    return dot(proj, out.data());
  };
  f();
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  ops::local_attention_backward(dq.data(), dk.data(), dv.data(), proj.data(), probs.data(),
                                q.data(), k.data(), v.data(), s);
  EXPECT_LT(rel_err(dq, numeric_grad(f, q)), kTol);
  EXPECT_LT(rel_err(dk, numeric_grad(f, k)), kTol);
  EXPECT_LT(rel_err(dv, numeric_grad(f, v)), kTol);
  // Causal: the first query sees only the first key, so its output is v_0 of its kv head.
  const int64_t G = c.H / c.Hkv;
  for (int64_t h = 0; h < c.H; ++h)
    for (int64_t j = 0; j < c.d; ++j) EXPECT_NEAR(out[h * c.d + j], v[(h / G) * c.d + j], 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnCase{1, 5, 2, 2, 4}, AttnCase{2, 4, 4, 2, 6},
                                           AttnCase{2, 3, 3, 1, 4}));

TEST(Attention, CachedPrefixMatchesWholeSegment) {
  // Queries 3..5 against a cache of keys 0..5 equal rows 3..5 of the whole-segment forward.
  const int64_t n = 6, H = 2, Hkv = 1, d = 4, qw = H * d, kw = Hkv * d;
  auto q = random_vec(n * qw, 1), k = random_vec(n * kw, 2), v = random_vec(n * kw, 3);
  std::vector<double> full(n * qw), part(3 * qw);
  ops::local_attention_forward(full.data(), (double*)nullptr, q.data(), k.data(), v.data(),
                               {1, n, 0, n, H, Hkv, d});
  ops::local_attention_forward(part.data(), (double*)nullptr, q.data() + 3 * qw, k.data(),
                               v.data(), {1, 3, 3, 8, H, Hkv, d});
  for (int64_t i = 0; i < 3 * qw; ++i) EXPECT_NEAR(part[i], full[3 * qw + i], 1e-12);
}

TEST(Attention, HeadKernelsOverManyBlocksMatchTheReference) {
  // One head over several query and key blocks (n a multiple of neither), with every buffer
  // the kernels write into starting as NaN: an entry they read without writing it first
  // (e.g. a masked probability that a key block of the backward covers) poisons the result.
  const int64_t n = 2 * ops::kKeyBlock + ops::kAttentionBlock / 2 + 3, d = 8;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto q = random_vec(n * d, 1), k = random_vec(n * d, 2), v = random_vec(n * d, 3);
  auto dout = random_vec(n * d, 4);
  const ops::AttentionShape s{1, n, 0, n, 1, 1, d};
  std::vector<double> out_ref(n * d), probs_ref(n * n);
  ops::local_attention_forward_reference(out_ref.data(), probs_ref.data(), q.data(), k.data(),
                                         v.data(), s);
  std::vector<double> dq_ref(n * d), dk_ref(n * d), dv_ref(n * d);
  ops::local_attention_backward_reference(dq_ref.data(), dk_ref.data(), dv_ref.data(),
                                          dout.data(), probs_ref.data(), q.data(), k.data(),
                                          v.data(), s);

  std::vector<double> out(n * d, nan), probs(n * n, nan), scratch(n * n, nan);
  ops::attention_head_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), n, 0, d,
                              d, d, scratch.data());
  EXPECT_LT(rel_err(out, out_ref), 1e-12);
  std::vector<double> dq(n * d, nan), dk(n * d, 0.0), dv(n * d, 0.0);
  std::fill(scratch.begin(), scratch.end(), nan);
  ops::attention_head_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(),
                               q.data(), k.data(), v.data(), n, d, d, d, scratch.data());
  EXPECT_LT(rel_err(dq, dq_ref), 1e-12);
  EXPECT_LT(rel_err(dk, dk_ref), 1e-12);
  EXPECT_LT(rel_err(dv, dv_ref), 1e-12);

  // Without probs (streaming), the scratch rows hold the block's probabilities.
  std::vector<double> out2(n * d, nan);
  std::fill(scratch.begin(), scratch.end(), nan);
  ops::attention_head_forward(out2.data(), (double*)nullptr, q.data(), k.data(), v.data(), n, 0,
                              d, d, d, scratch.data());
  EXPECT_LT(rel_err(out2, out_ref), 1e-12);
}

TEST(Attention, FloatSoftmaxMasksWhatItDoesNotOwn) {
  // The float forward's softmax walks rows in whole 16-wide blocks past the last visible key,
  // masking the rest: with the probability and scratch buffers starting as NaN, and a cached
  // prefix (p0) that puts row ends at every offset within a block, the output and the saved
  // probabilities must still match the double reference, and masked entries must be 0.
  const int64_t n = ops::kAttentionBlock + 21, p0 = 7, ctx = p0 + n, d = 16;
  auto qd = random_vec(n * d, 1), kd = random_vec(ctx * d, 2), vd = random_vec(ctx * d, 3);
  const ops::AttentionShape s{1, n, p0, ctx, 1, 1, d};
  std::vector<double> out_ref(n * d), probs_ref(n * ctx);
  ops::local_attention_forward_reference(out_ref.data(), probs_ref.data(), qd.data(), kd.data(),
                                         vd.data(), s);
  const std::vector<float> q(qd.begin(), qd.end()), k(kd.begin(), kd.end()),
      v(vd.begin(), vd.end());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const bool keep_probs : {true, false}) {
    std::vector<float> out(n * d, nan), probs(n * ctx, nan), scratch(n * ctx, nan);
    ops::attention_head_forward(out.data(), keep_probs ? probs.data() : nullptr, q.data(),
                                k.data(), v.data(), n, p0, d, d, d, scratch.data());
    for (int64_t i = 0; i < n * d; ++i)
      ASSERT_NEAR(out[i], out_ref[i], 1e-5) << "keep_probs " << keep_probs << " at " << i;
    if (!keep_probs) continue;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < ctx; ++j) {
        const float p = probs[i * ctx + j];
        if (j <= p0 + i) {
          ASSERT_NEAR(p, probs_ref[i * ctx + j], 1e-6) << i << ", " << j;
        } else if (!std::isnan(p)) {
          ASSERT_EQ(p, 0.0f) << i << ", " << j;  // a masked entry it wrote must be zero
        }
      }
  }
}

class MemoryTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(MemoryTest, RetrieveBackward) {
  const auto c = GetParam();
  const int64_t qw = c.H * c.d, r = c.B * c.n;
  const ops::MemoryShape s{c.B, c.n, c.n, c.H, c.Hkv, c.d};
  auto q = random_vec(r * qw, 1);
  // A plausible state: M arbitrary, z positive (a sum of sigma values).
  auto M = random_vec(c.B * c.Hkv * c.d * c.d, 2);
  auto z = random_vec(c.B * c.Hkv * c.d, 3);
  for (auto& x : z) x = std::abs(x) + 0.5;
  auto proj = random_vec(r * qw, 4);
  std::vector<double> out(r * qw), sq(r * qw), den(c.B * c.H * c.n);
  auto f = [&] {
    ops::memory_retrieve_forward(out.data(), sq.data(), den.data(), q.data(), M.data(), z.data(), s);
    return dot(proj, out.data());
  };
  f();
  std::vector<double> dq(q.size(), 0.0), dM(M.size(), 0.0), dz(z.size(), 0.0);
  ops::memory_retrieve_backward(dq.data(), dM.data(), dz.data(), proj.data(), out.data(),
                                sq.data(), den.data(), q.data(), M.data(), z.data(), s);
  EXPECT_LT(rel_err(dq, numeric_grad(f, q)), kTol);
  EXPECT_LT(rel_err(dM, numeric_grad(f, M)), kTol);
  EXPECT_LT(rel_err(dz, numeric_grad(f, z)), kTol);
}

TEST_P(MemoryTest, UpdateBackwardLinearAndDelta) {
  const auto c = GetParam();
  const int64_t kw = c.Hkv * c.d, r = c.B * c.n;
  const ops::MemoryShape s{c.B, c.n, c.n, c.H, c.Hkv, c.d};
  for (bool delta : {false, true}) {
    auto k = random_vec(r * kw, 1), v = random_vec(r * kw, 2);
    auto M0 = random_vec(c.B * c.Hkv * c.d * c.d, 3);
    auto z0 = random_vec(c.B * c.Hkv * c.d, 4);
    for (auto& x : z0) x = std::abs(x) + 0.5;
    auto pM = random_vec(M0.size(), 5), pz = random_vec(z0.size(), 6);
    auto f = [&] {
      auto M = M0, z = z0;
      ops::memory_update_forward(M.data(), z.data(), k.data(), v.data(), s, delta);
      return dot(pM, M.data()) + dot(pz, z.data());
    };
    std::vector<double> dk(k.size(), 0.0), dv(v.size(), 0.0), dM = pM, dz = pz;
    ops::memory_update_backward(dk.data(), dv.data(), dM.data(), dz.data(), k.data(), v.data(),
                                M0.data(), z0.data(), s, delta);
    EXPECT_LT(rel_err(dk, numeric_grad(f, k)), kTol) << "delta=" << delta;
    EXPECT_LT(rel_err(dv, numeric_grad(f, v)), kTol) << "delta=" << delta;
    EXPECT_LT(rel_err(dM, numeric_grad(f, M0)), kTol) << "delta=" << delta;
    EXPECT_LT(rel_err(dz, numeric_grad(f, z0)), kTol) << "delta=" << delta;
  }
}

TEST(Memory, ZeroStateReadsZeroAndLinearUpdateIsOuterProductSum) {
  const int64_t n = 3, d = 2;
  const ops::MemoryShape s{1, n, n, 1, 1, d};
  std::vector<double> q = {0.5, -1, 2, 0.1, -0.3, 0.7}, M(d * d, 0.0), z(d, 0.0);
  std::vector<double> out(n * d), sq(n * d), den(n);
  ops::memory_retrieve_forward(out.data(), sq.data(), den.data(), q.data(), M.data(), z.data(), s);
  for (double x : out) EXPECT_EQ(x, 0.0);
  std::vector<double> k = {1, -1, 0, 2, -2, 0.5}, v = {1, 2, 3, 4, 5, 6};
  ops::memory_update_forward(M.data(), z.data(), k.data(), v.data(), s, false);
  auto sig = [](double x) { return x > 0 ? x + 1 : std::exp(x); };
  for (int i = 0; i < d; ++i) {
    double zi = 0;
    for (int t = 0; t < n; ++t) zi += sig(k[t * d + i]);
    EXPECT_NEAR(z[i], zi, 1e-12);
    for (int j = 0; j < d; ++j) {
      double mij = 0;
      for (int t = 0; t < n; ++t) mij += sig(k[t * d + i]) * v[t * d + j];
      EXPECT_NEAR(M[i * d + j], mij, 1e-12);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MemoryTest,
                         ::testing::Values(AttnCase{1, 4, 2, 2, 3}, AttnCase{2, 3, 4, 2, 4},
                                           AttnCase{1, 5, 3, 1, 2}));
