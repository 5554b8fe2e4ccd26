// The fast paths against the plain reference code they replace: causal-block attention against
// the full-matrix version, and the fused multi-threaded layer code (ForwardContext::reference
// false) against the op-by-op one, at several thread counts, in double and in float.
#include <gtest/gtest.h>

#include "model/bptt.hpp"
#include "ops/attention.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/fastmath.hpp"
#include "ops/memory.hpp"
#include "ops/sgemm.hpp"
#include "util/gradcheck.hpp"
#include "util/nan_max.hpp"
#include "util/precision_check.hpp"
#include "util/random_model.hpp"

using namespace infini;
using namespace infini::model;
using namespace infini::testing;

namespace {

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = nan_max(m, std::abs(x));
  return m;
}

// Against `want` (float64 of bf16-rounded inputs): the largest |got - want| over every result in
// `gots`, and |other - want| (the fp32 path), both over max |want|.
std::pair<double, double> worst_of(const std::vector<double>& want,
                                   std::initializer_list<const std::vector<float>*> gots,
                                   const std::vector<float>& other) {
  double size = 0, worst = 0, moved = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    size = std::max(size, std::abs(want[i]));
    for (const std::vector<float>* got : gots)
      worst = std::max(worst, std::abs(double((*got)[i]) - want[i]));
    moved = std::max(moved, std::abs(double(other[i]) - want[i]));
  }
  return {worst / size, moved / size};
}

}  // namespace

TEST(FastMath, ExpWithinTwoUlpAndSaturates) {
  double worst = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.01f) {
    const double want = std::exp(double(x));
    worst = nan_max(worst, std::abs(double(ops::fast_exp(x)) - want) / want);
  }
  EXPECT_LT(worst, 2.5e-7);
  EXPECT_EQ(ops::fast_exp(0.0f), 1.0f);
  EXPECT_GT(ops::fast_exp(-1000.0f), 0.0f);
  EXPECT_LT(ops::fast_exp(-1000.0f), 2e-38f);
  EXPECT_TRUE(std::isnan(ops::fast_exp(std::nanf(""))));
  EXPECT_NEAR(ops::fast_elu1(-0.5f), std::exp(-0.5f), 1e-7);
  EXPECT_EQ(ops::fast_elu1(2.0f), 3.0f);
}

struct AttnShape {
  int64_t B, n, p0, H, Hkv, d;
};

class FastAttention : public ::testing::TestWithParam<AttnShape> {};

TEST_P(FastAttention, MatchesReferenceForwardAndBackward) {
  const auto c = GetParam();
  const int64_t ctx = c.p0 + c.n, qw = c.H * c.d, kw = c.Hkv * c.d;
  const ops::AttentionShape s{c.B, c.n, c.p0, ctx, c.H, c.Hkv, c.d};
  auto q = random_vec(c.B * c.n * qw, 1), k = random_vec(c.B * ctx * kw, 2);
  auto v = random_vec(c.B * ctx * kw, 3), dout = random_vec(c.B * c.n * qw, 4);
  std::vector<double> out(q.size()), ref(q.size());
  std::vector<double> probs(c.B * c.H * c.n * ctx), probs_ref(probs.size());
  ops::local_attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  ops::local_attention_forward_reference(ref.data(), probs_ref.data(), q.data(), k.data(), v.data(),
                                         s);
  EXPECT_LT(rel_err(out, ref), 1e-13);
  // Without saved probabilities (decode) the result is the same.
  std::vector<double> out2(q.size());
  ops::local_attention_forward(out2.data(), (double*)nullptr, q.data(), k.data(), v.data(), s);
  EXPECT_LT(rel_err(out2, ref), 1e-13);
  // The causal part of the saved probabilities matches.
  for (int64_t bh = 0; bh < c.B * c.H; ++bh)
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t j = 0; j <= c.p0 + i; ++j) {
        const size_t at = size_t((bh * c.n + i) * ctx + j);
        ASSERT_NEAR(probs[at], probs_ref[at], 1e-14);
      }
  if (c.p0 != 0) return;  // the backward is for whole segments
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  std::vector<double> dq_r(q.size()), dk_r(k.size()), dv_r(v.size());
  ops::local_attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(),
                                q.data(), k.data(), v.data(), s);
  ops::local_attention_backward_reference(dq_r.data(), dk_r.data(), dv_r.data(), dout.data(),
                                          probs_ref.data(), q.data(), k.data(), v.data(), s);
  EXPECT_LT(rel_err(dq, dq_r), 1e-12);
  EXPECT_LT(rel_err(dk, dk_r), 1e-12);
  EXPECT_LT(rel_err(dv, dv_r), 1e-12);
  EXPECT_GT(max_abs(dk), 1e-3);  // the comparison is not between zeros
}

TEST_P(FastAttention, Bf16ForwardMatchesFloat64OfRoundedInputs) {
  // With bf16 products, the blocked per-head kernel and the full-matrix reference are held to a
  // float64 computation on bf16-rounded q, k, v whose probabilities are rounded to bf16 before
  // PV, as the kernels round them (fp32 probabilities may round the other way near a tie, so
  // the bound allows a bf16 step of the output's scale).
  const auto c = GetParam();
  const int64_t ctx = c.p0 + c.n, qw = c.H * c.d, kw = c.Hkv * c.d, G = c.H / c.Hkv;
  const ops::AttentionShape s{c.B, c.n, c.p0, ctx, c.H, c.Hkv, c.d};
  auto tofloat = [](const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  const auto q = tofloat(random_vec(c.B * c.n * qw, 11)),
             k = tofloat(random_vec(c.B * ctx * kw, 12));
  const auto v = tofloat(random_vec(c.B * ctx * kw, 13));
  std::vector<float> fast(q.size()), full(q.size()), scratch(size_t(ops::kAttentionBlock * ctx));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      ops::attention_head_forward(
          fast.data() + b * c.n * qw + h * c.d, (float*)nullptr, q.data() + b * c.n * qw + h * c.d,
          k.data() + b * ctx * kw + (h / G) * c.d, v.data() + b * ctx * kw + (h / G) * c.d, c.n,
          c.p0, c.d, qw, kw, scratch.data(), true);
  std::vector<float> probs(size_t(c.B * c.H * c.n * ctx));
  ops::local_attention_forward_reference(full.data(), probs.data(), q.data(), k.data(), v.data(), s,
                                         true);
  const double scale = 1.0 / std::sqrt(double(c.d));
  double worst = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t i = 0; i < c.n; ++i) {
        const int64_t last = c.p0 + i;
        std::vector<double> p(size_t(last + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += double(ops::round_bf16(q[size_t(b * c.n * qw + i * qw + h * c.d + e)])) *
                   double(ops::round_bf16(k[size_t(b * ctx * kw + j * kw + (h / G) * c.d + e)]));
          p[size_t(j)] = dot * scale;
          mx = std::max(mx, p[size_t(j)]);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < c.d; ++e) {
          double o = 0;
          for (int64_t j = 0; j <= last; ++j)
            o += double(ops::round_bf16(float(p[size_t(j)] / sum))) *
                 double(ops::round_bf16(v[size_t(b * ctx * kw + j * kw + (h / G) * c.d + e)]));
          const size_t at = size_t(b * c.n * qw + i * qw + h * c.d + e);
          worst = std::max({worst, std::abs(fast[at] - o), std::abs(full[at] - o)});
        }
      }
  EXPECT_LT(worst, 4e-3);  // a bf16 step (2^-8) of outputs of size ~1, far below it in practice
  // Without bf16 the kernel differs from these rounded products by more: the option is used.
  std::vector<float> fp32(q.size());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      ops::attention_head_forward(
          fp32.data() + b * c.n * qw + h * c.d, (float*)nullptr, q.data() + b * c.n * qw + h * c.d,
          k.data() + b * ctx * kw + (h / G) * c.d, v.data() + b * ctx * kw + (h / G) * c.d, c.n,
          c.p0, c.d, qw, kw, scratch.data(), false);
  double moved = 0;
  for (size_t i = 0; i < fp32.size(); ++i)
    moved = std::max(moved, double(std::abs(fp32[i] - fast[i])));
  EXPECT_GT(moved, 1e-4);
}

TEST_P(FastAttention, Bf16BackwardMatchesFloat64OfRoundedInputs) {
  // With bf16 products, the per-head backward and the full-matrix reference against a float64
  // computation that rounds what the kernels round: dO and V for dP; dS (computed, as the
  // kernels do, from fp32 values) and K for dQ, dS and Q for dK; P and dO for dV.
  const auto c = GetParam();
  if (c.p0 != 0) return;  // the backward is for whole segments
  const int64_t n = c.n, qw = c.H * c.d, kw = c.Hkv * c.d, G = c.H / c.Hkv;
  const ops::AttentionShape s{c.B, n, 0, n, c.H, c.Hkv, c.d};
  auto tofloat = [](const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  const auto q = tofloat(random_vec(c.B * n * qw, 21)), k = tofloat(random_vec(c.B * n * kw, 22));
  const auto v = tofloat(random_vec(c.B * n * kw, 23)),
             dout = tofloat(random_vec(c.B * n * qw, 24));
  std::vector<float> out(q.size()), probs(size_t(c.B * c.H * n * n));
  ops::local_attention_forward_reference(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  struct Grads {
    std::vector<float> dq, dk, dv;
  };
  auto fast = [&](bool bf16) {
    Grads g{std::vector<float>(q.size()), std::vector<float>(k.size(), 0.0f),
            std::vector<float>(v.size(), 0.0f)};
    std::vector<float> scratch(size_t(n * n));
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t qo = b * n * qw + h * c.d, ko = b * n * kw + (h / G) * c.d;
        ops::attention_head_backward(g.dq.data() + qo, g.dk.data() + ko, g.dv.data() + ko,
                                     dout.data() + qo, probs.data() + (b * c.H + h) * n * n,
                                     q.data() + qo, k.data() + ko, v.data() + ko, n, c.d, qw, kw,
                                     scratch.data(), bf16);
      }
    return g;
  };
  const Grads blocked = fast(true), fp32 = fast(false);
  Grads full{std::vector<float>(q.size()), std::vector<float>(k.size()),
             std::vector<float>(v.size())};
  ops::local_attention_backward_reference(full.dq.data(), full.dk.data(), full.dv.data(),
                                          dout.data(), probs.data(), q.data(), k.data(), v.data(),
                                          s, true);
  auto r = [](float x) { return double(ops::round_bf16(x)); };
  const double scale = 1.0 / std::sqrt(double(c.d));
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      const int64_t qo = b * n * qw + h * c.d, ko = b * n * kw + (h / G) * c.d;
      const float* P = probs.data() + (b * c.H + h) * n * n;
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> dp(size_t(i + 1));
        double dot = 0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t e = 0; e < c.d; ++e)
            dp[size_t(j)] += r(dout[size_t(qo + i * qw + e)]) * r(v[size_t(ko + j * kw + e)]);
          dot += double(P[i * n + j]) * dp[size_t(j)];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = r(float(double(P[i * n + j]) * (dp[size_t(j)] - dot) * scale));
          const double p = r(P[i * n + j]);
          for (int64_t e = 0; e < c.d; ++e) {
            dq[size_t(qo + i * qw + e)] += ds * r(k[size_t(ko + j * kw + e)]);
            dk[size_t(ko + j * kw + e)] += ds * r(q[size_t(qo + i * qw + e)]);
            dv[size_t(ko + j * kw + e)] += p * r(dout[size_t(qo + i * qw + e)]);
          }
        }
      }
    }
  for (auto [name, want, got, plain, f32] :
       {std::tuple{"dq", &dq, &blocked.dq, &full.dq, &fp32.dq},
        std::tuple{"dk", &dk, &blocked.dk, &full.dk, &fp32.dk},
        std::tuple{"dv", &dv, &blocked.dv, &full.dv, &fp32.dv}}) {
    const auto [worst, moved] = worst_of(*want, {got, plain}, *f32);
    EXPECT_LT(worst, 2e-3) << name;  // a fraction of a bf16 step: tie flips of dS only
    EXPECT_GT(moved, 2 * worst) << name << ": without bf16 the results differ by more";
  }
}

// The compressive memory's products with bf16 inputs, against float64 computations that round
// what the kernels round (the state M as it is read, sigma(q), sigma(k), the delta rule's
// residual, the backward's incoming gradients) and keep the rest exact; n odd (a pad pair) and
// not a multiple of the kernel's 12 rows, q/k/v with a row stride of two heads.
namespace {

struct MemoryBf16Case {
  int64_t n = 37, d = 32, ld = 64;
  std::vector<float> q, k, v, M, z, dout, dM, dz;
  MemoryBf16Case() {
    auto f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
    q = f(random_vec(size_t(n * ld), 31));
    k = f(random_vec(size_t(n * ld), 32));
    v = f(random_vec(size_t(n * ld), 33));
    M = f(random_vec(size_t(d * d), 34, 0.3));
    z = f(random_vec(size_t(d), 35));
    for (auto& x : z) x = std::abs(x) + 2.0f;  // a sum of sigma values: positive
    dout = f(random_vec(size_t(n * ld), 36));
    dM = f(random_vec(size_t(d * d), 37));
    dz = f(random_vec(size_t(d), 38));
  }
};

double rb(float x) { return double(ops::round_bf16(x)); }

}  // namespace

TEST(MemoryBf16, RetrievalAndUpdateMatchFloat64OfRoundedInputs) {
  if (!ops::bf16_native_available()) GTEST_SKIP() << "the emulation is tested in bf16_gemm_test";
  MemoryBf16Case c;
  const int64_t n = c.n, d = c.d, ld = c.ld;
  // Retrieval: out = bf16(sigma(q)) bf16(M) / den, with the kernel's own fp32 sigma(q) and den.
  std::vector<float> out(size_t(n * ld), 0), sq(size_t(n * ld), 0), den(size_t(n), 0), out32(out);
  ops::memory_retrieve_head(out.data(), sq.data(), den.data(), c.q.data(), c.M.data(), c.z.data(),
                            n, d, ld, true);
  ops::memory_retrieve_head(out32.data(), sq.data(), den.data(), c.q.data(), c.M.data(), c.z.data(),
                            n, d, ld, false);
  std::vector<double> want(size_t(n * d), 0);
  std::vector<float> got(want.size()), got32(want.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < d; ++i)
        acc += rb(sq[size_t(t * ld + i)]) * rb(c.M[size_t(i * d + j)]);
      want[size_t(t * d + j)] = acc / den[size_t(t)];
      got[size_t(t * d + j)] = out[size_t(t * ld + j)];
      got32[size_t(t * d + j)] = out32[size_t(t * ld + j)];
    }
  auto [worst, moved] = worst_of(want, {&got}, got32);
  EXPECT_LT(worst, 1e-5) << "retrieval";
  EXPECT_GT(moved, 10 * worst) << "retrieval: without bf16 the result differs by more";

  // Updates: linear M += bf16(sk)^T bf16(v); delta M += bf16(sk)^T bf16(v - bf16(sk) bf16(M) /
  // den).
  for (const bool delta : {false, true}) {
    std::vector<float> M = c.M, z = c.z, M32 = c.M, z32 = c.z;
    std::vector<float> scratch(size_t(ops::memory_scratch_size(n, d)), 0);
    ops::memory_update_group(M.data(), z.data(), c.k.data(), c.v.data(), n, d, ld, delta,
                             scratch.data(), true);
    ops::memory_update_group(M32.data(), z32.data(), c.k.data(), c.v.data(), n, d, ld, delta,
                             scratch.data(), false);
    std::vector<float> sk(size_t(n * d), 0);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < d; ++i)
        sk[size_t(t * d + i)] = ops::fast_elu1(c.k[size_t(t * ld + i)]);
    std::vector<double> u(size_t(n * d), 0), Mw(size_t(d * d), 0);
    for (int64_t t = 0; t < n; ++t) {
      double dn = ops::kMemoryEps;
      for (int64_t i = 0; i < d; ++i) dn += double(sk[size_t(t * d + i)]) * c.z[size_t(i)];
      for (int64_t j = 0; j < d; ++j) {
        double r = 0;
        if (delta)
          for (int64_t i = 0; i < d; ++i)
            r += rb(sk[size_t(t * d + i)]) * rb(c.M[size_t(i * d + j)]);
        u[size_t(t * d + j)] = rb(float(c.v[size_t(t * ld + j)] - r / dn));
      }
    }
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) {
        double acc = c.M[size_t(i * d + j)];
        for (int64_t t = 0; t < n; ++t) acc += rb(sk[size_t(t * d + i)]) * u[size_t(t * d + j)];
        Mw[size_t(i * d + j)] = acc;
      }
    auto [w, m] = worst_of(Mw, {&M}, M32);
    EXPECT_LT(w, 2e-4) << "delta=" << delta;  // the odd tie flip of the residual's rounding
    EXPECT_GT(m, 10 * w) << "delta=" << delta << ": without bf16 the result differs by more";
    EXPECT_EQ(z, z32) << "z is a sum of sigma values, no product";
  }
}

TEST(MemoryBf16, BackwardMatchesFloat64OfRoundedInputs) {
  if (!ops::bf16_native_available()) GTEST_SKIP() << "the emulation is tested in bf16_gemm_test";
  MemoryBf16Case c;
  const int64_t n = c.n, d = c.d, ld = c.ld;
  std::vector<float> scratch(size_t(ops::memory_scratch_size(n, d)), 0);
  // Retrieval backward: dsq = bf16(dnum) bf16(M)^T, dM += bf16(sq)^T bf16(dnum).
  {
    std::vector<float> out(size_t(n * ld), 0), sq(size_t(n * ld), 0), den(size_t(n), 0);
    ops::memory_retrieve_head(out.data(), sq.data(), den.data(), c.q.data(), c.M.data(), c.z.data(),
                              n, d, ld, true);
    auto run = [&](bool bf16) {
      std::vector<float> dq(size_t(n * ld), 0.0f), dM(size_t(d * d), 0.0f), dz(size_t(d), 0.0f);
      ops::memory_retrieve_head_backward(dq.data(), dM.data(), dz.data(), c.dout.data(), out.data(),
                                         sq.data(), den.data(), c.q.data(), c.M.data(), c.z.data(),
                                         n, d, ld, scratch.data(), bf16);
      return std::pair{dq, dM};
    };
    auto [dq, dM] = run(true);
    auto [dq32, dM32] = run(false);
    std::vector<double> wq(size_t(n * d), 0), wM(size_t(d * d), 0.0);
    std::vector<float> gq(wq.size()), gq32(wq.size());
    for (int64_t t = 0; t < n; ++t) {
      const double inv = 1.0 / den[size_t(t)];
      double dd = 0;
      std::vector<double> dnum(size_t(d), 0);
      for (int64_t j = 0; j < d; ++j) {
        const double g = c.dout[size_t(t * ld + j)];
        dnum[size_t(j)] = rb(float(g * inv));
        dd += g * out[size_t(t * ld + j)];
      }
      dd *= -inv;
      for (int64_t i = 0; i < d; ++i) {
        double s = 0;
        for (int64_t j = 0; j < d; ++j) s += dnum[size_t(j)] * rb(c.M[size_t(i * d + j)]);
        const float qi = c.q[size_t(t * ld + i)];
        wq[size_t(t * d + i)] = (s + dd * c.z[size_t(i)]) * ops::fast_elu1_grad(qi);
        gq[size_t(t * d + i)] = dq[size_t(t * ld + i)];
        gq32[size_t(t * d + i)] = dq32[size_t(t * ld + i)];
        for (int64_t j = 0; j < d; ++j)
          wM[size_t(i * d + j)] += rb(sq[size_t(t * ld + i)]) * dnum[size_t(j)];
      }
    }
    for (auto [name, want, got, f32] :
         {std::tuple{"dq", &wq, &gq, &gq32}, std::tuple{"dM", &wM, &dM, &dM32}}) {
      auto [w, m] = worst_of(*want, {got}, *f32);
      EXPECT_LT(w, 2e-4) << name;
      EXPECT_GT(m, 10 * w) << name << ": without bf16 the result differs by more";
    }
  }
  // Update backward, both rules: du = bf16(sk) bf16(dM'); linear dsk = bf16(v) bf16(dM')^T; delta
  // dsk = bf16(U) bf16(dM')^T + bf16(dnum) bf16(M)^T + dden z, dM += bf16(sk)^T bf16(dnum).
  for (const bool delta : {false, true}) {
    auto run = [&](bool bf16) {
      std::vector<float> dk(size_t(n * ld), 0.0f), dv(size_t(n * ld), 0.0f), dM = c.dM, dz = c.dz;
      ops::memory_update_group_backward(dk.data(), dv.data(), dM.data(), dz.data(), c.k.data(),
                                        c.v.data(), c.M.data(), c.z.data(), n, d, ld, delta,
                                        scratch.data(), bf16);
      return std::tuple{dk, dv, dM};
    };
    auto [dk, dv, dM] = run(true);
    auto [dk32, dv32, dM32] = run(false);
    std::vector<double> wk(size_t(n * d), 0), wv(size_t(n * d), 0), wM(c.dM.begin(), c.dM.end());
    std::vector<float> gk(wk.size()), gv(wv.size()), gk32(wk.size()), gv32(wv.size());
    for (int64_t t = 0; t < n; ++t) {
      std::vector<float> sk(size_t(d), 0);
      double dn = ops::kMemoryEps;
      for (int64_t i = 0; i < d; ++i) {
        sk[size_t(i)] = ops::fast_elu1(c.k[size_t(t * ld + i)]);
        dn += double(sk[size_t(i)]) * c.z[size_t(i)];
      }
      std::vector<double> du(size_t(d), 0), vr(size_t(d), 0), dnum(size_t(d), 0);
      double dden = 0;
      for (int64_t j = 0; j < d; ++j) {
        for (int64_t i = 0; i < d; ++i) {
          du[size_t(j)] += rb(sk[size_t(i)]) * rb(c.dM[size_t(i * d + j)]);
          if (delta) vr[size_t(j)] += rb(sk[size_t(i)]) * rb(c.M[size_t(i * d + j)]);
        }
        vr[size_t(j)] /= dn;
        dnum[size_t(j)] = rb(float(-du[size_t(j)] / dn));
        dden += -du[size_t(j)] * vr[size_t(j)];
      }
      dden *= -1.0 / dn;
      for (int64_t i = 0; i < d; ++i) {
        double dsk = 0;
        for (int64_t j = 0; j < d; ++j) {
          const double vj = c.v[size_t(t * ld + j)];
          dsk += rb(float(delta ? vj - vr[size_t(j)] : vj)) * rb(c.dM[size_t(i * d + j)]);
          if (delta) dsk += dnum[size_t(j)] * rb(c.M[size_t(i * d + j)]);
        }
        if (delta) dsk += dden * c.z[size_t(i)];
        const size_t at = size_t(t * ld + i), w = size_t(t * d + i);
        wk[w] = (dsk + c.dz[size_t(i)]) * ops::fast_elu1_grad(c.k[at]);
        wv[w] = du[size_t(i)];
        gk[w] = dk[at], gv[w] = dv[at], gk32[w] = dk32[at], gv32[w] = dv32[at];
        if (delta)
          for (int64_t j = 0; j < d; ++j)
            wM[size_t(i * d + j)] += rb(sk[size_t(i)]) * dnum[size_t(j)];
      }
    }
    for (auto [name, want, got, f32] :
         {std::tuple{"dk", &wk, &gk, &gk32}, std::tuple{"dv", &wv, &gv, &gv32},
          std::tuple{"dM", &wM, &dM, &dM32}}) {
      if (!delta && std::string(name) == "dM") continue;  // the linear rule passes dM through
      auto [w, m] = worst_of(*want, {got}, *f32);
      EXPECT_LT(w, 2e-4) << name << " delta=" << delta;
      EXPECT_GT(m, 10 * w) << name << " delta=" << delta << ": without bf16 it differs by more";
    }
  }
}

// n not a multiple of the 64-row block, several blocks, GQA and MQA, a cached prefix.
INSTANTIATE_TEST_SUITE_P(Shapes, FastAttention,
                         ::testing::Values(AttnShape{2, 150, 0, 4, 2, 8},
                                           AttnShape{1, 64, 0, 2, 2, 16},
                                           AttnShape{1, 130, 0, 3, 1, 4},
                                           AttnShape{1, 70, 60, 2, 1, 8},
                                           AttnShape{2, 5, 0, 2, 2, 4}));

namespace {

struct ModelCase {
  const char* name;
  MemoryUpdate rule;
  bool use_memory, bias;
  int64_t heads, kv_heads, head_dim, seg, T, B;
};

ModelConfig make_config(const ModelCase& c) {
  ModelConfig cfg;
  cfg.model_type = c.bias ? "qwen2" : "llama";
  cfg.vocab_size = 37;
  cfg.hidden_size = 24;
  cfg.intermediate_size = 40;
  cfg.num_layers = 2;
  cfg.num_heads = c.heads;
  cfg.num_kv_heads = c.kv_heads;
  cfg.head_dim = c.head_dim;
  cfg.rms_norm_eps = 1e-5;
  cfg.rope_theta = 1000.0;
  cfg.attention_bias = c.bias;
  cfg.segment_length = c.seg;
  cfg.memory_update = c.rule;
  cfg.use_memory = c.use_memory;
  return cfg;
}

Model<double> random_model(const ModelConfig& cfg, uint64_t seed) {
  return noisy_model(cfg, seed, 0.3, 0.3, 1,
                     {ParamKind::Norm, ParamKind::Bias, ParamKind::Gate, ParamKind::Router});
}

// Segments longer than one attention block, a short last segment, batches of 2.
const ModelCase kModelCases[] = {
    {"delta_mha", MemoryUpdate::Delta, true, false, 2, 2, 12, 80, 190, 2},
    {"linear_gqa_bias", MemoryUpdate::Linear, true, true, 4, 2, 6, 70, 150, 2},
    {"delta_mqa", MemoryUpdate::Delta, true, false, 3, 1, 8, 66, 140, 1},
    {"local_only", MemoryUpdate::Linear, false, false, 2, 2, 12, 80, 130, 2},
};

class FastModel : public ::testing::TestWithParam<ModelCase> {};

// A random model of `c` in float64 and its float copy, random tokens, and the float64
// reference path's mean loss and gradient.
struct Float64Reference {
  Model<double> md;
  Model<float> mf;
  std::vector<int32_t> tokens;
  std::vector<double> grad;
  double loss = 0;
  Float64Reference(const ModelCase& c, uint64_t seed)
      : md(random_model(make_config(c), seed)),
        mf(cast_model<float>(md)),
        tokens(random_tokens(c.B * c.T, md.config.vocab_size, seed + 1)),
        grad(size_t(md.layout.total), 0.0) {
    ForwardContext<double> cd(md.config);
    cd.reference = true;
    SequenceWorkspace<double> wd;
    loss = sequence_loss<double>(md, cd, tokens.data(), c.B, c.T, grad.data(), {}, wd).mean();
  }
};

}  // namespace

TEST_P(FastModel, LossAndGradientsMatchReferenceAtAnyThreadCount) {
  const ModelCase c = GetParam();
  const ModelConfig cfg = make_config(c);
  const Model<double> m = random_model(cfg, 3);
  const auto tokens = random_tokens(c.B * c.T, cfg.vocab_size, 4);
  ForwardContext<double> ref_ctx(cfg);
  ref_ctx.reference = true;
  SequenceWorkspace<double> ws;
  std::vector<double> g_ref(size_t(m.layout.total), 0.0);
  MemoryState<double> st_ref = MemoryState<double>::zeros(cfg, c.B);
  const double l_ref =
      sequence_loss<double>(m, ref_ctx, tokens.data(), c.B, c.T, g_ref.data(), {}, ws, &st_ref)
          .loss_sum;
  ASSERT_GT(max_abs(g_ref), 1e-4);
  std::vector<double> first;
  for (int threads : {1, 2, 3}) {
    ForwardContext<double> ctx(cfg);
    ctx.threads = threads;
    for (int rep = 0; rep < 2; ++rep) {
      std::vector<double> g(size_t(m.layout.total), 0.0);
      MemoryState<double> st = MemoryState<double>::zeros(cfg, c.B);
      const double l =
          sequence_loss<double>(m, ctx, tokens.data(), c.B, c.T, g.data(), {}, ws, &st).loss_sum;
      EXPECT_NEAR(l, l_ref, 1e-11 * std::abs(l_ref)) << threads;
      EXPECT_LT(rel_err(g, g_ref), 1e-10) << threads;
      for (const auto& p : m.layout.params) {  // every tensor, not just the largest
        std::vector<double> a(g.begin() + p.offset, g.begin() + p.offset + p.numel);
        std::vector<double> b(g_ref.begin() + p.offset, g_ref.begin() + p.offset + p.numel);
        EXPECT_LT(rel_err(a, b, 1e-12), 1e-9) << threads << " " << p.name;
      }
      for (size_t i = 0; i < st.M.size(); ++i) ASSERT_NEAR(st.M[i], st_ref.M[i], 1e-10);
      // Each gradient is written by one task: the same threads give the same bits.
      if (threads == 2 && rep == 0) first = g;
      if (threads == 2 && rep == 1) {
        EXPECT_EQ(g, first);
      }
    }
  }
}

TEST_P(FastModel, KeptActivationsGiveTheSameGradientsAsRecomputation) {
  // The backward uses activations kept from the forward where the budget allows, and
  // recomputes the other segments: every budget must give the same loss and gradients, bit
  // for bit (both run the same forward code on the same inputs).
  const ModelCase c = GetParam();
  const ModelConfig cfg = make_config(c);
  const Model<float> m = cast_model<float>(random_model(cfg, 9));
  const auto tokens = random_tokens(c.B * c.T, cfg.vocab_size, 10);
  ForwardContext<float> ctx(cfg);
  ctx.threads = 2;
  const int64_t S = (c.T + cfg.segment_length - 1) / cfg.segment_length;
  ASSERT_GE(S, 2);
  auto run = [&](int64_t budget, SequenceWorkspace<float>& ws, const std::vector<int32_t>& toks,
                 int64_t T) {
    SequenceOptions o;
    o.keep_activations_bytes = budget;
    std::vector<float> g(size_t(m.layout.total), 0.0f);
    const double l = sequence_loss<float>(m, ctx, toks.data(), c.B, T, g.data(), o, ws).loss_sum;
    return std::make_pair(l, g);
  };
  const int64_t all_bytes = int64_t(1) << 40;
  SequenceWorkspace<float> ws_none, ws_all, ws_one;
  const auto none = run(0, ws_none, tokens, c.T);
  EXPECT_EQ(ws_none.kept_segments, 0);
  const auto all = run(all_bytes, ws_all, tokens, c.T);
  EXPECT_EQ(ws_all.kept_segments, S - 1);  // every segment but the last, kept
  // A budget of one and a half segments keeps exactly one.
  const int64_t one_segment = activation_bytes(ws_all.kept[0]);
  ASSERT_GT(one_segment, 0);
  const auto one = run(one_segment + one_segment / 2, ws_one, tokens, c.T);
  EXPECT_EQ(ws_one.kept_segments, 1);
  EXPECT_EQ(none.first, all.first);
  EXPECT_EQ(none.first, one.first);
  EXPECT_EQ(none.second, all.second);
  EXPECT_EQ(none.second, one.second);
  // A shorter sequence through the workspace that kept more: the extra segments stay
  // allocated (reused, not freed) and the result equals a fresh workspace's.
  const int64_t T2 = cfg.segment_length + 3;
  std::vector<int32_t> short_tokens;
  for (int64_t b = 0; b < c.B; ++b)
    short_tokens.insert(short_tokens.end(), tokens.begin() + b * c.T,
                        tokens.begin() + b * c.T + T2);
  SequenceWorkspace<float> ws_fresh;
  const auto fresh = run(all_bytes, ws_fresh, short_tokens, T2);
  const auto reused = run(all_bytes, ws_all, short_tokens, T2);
  EXPECT_EQ(ws_all.kept_segments, 1);
  EXPECT_EQ(int64_t(ws_all.kept.size()), S - 1);
  EXPECT_EQ(reused.first, fresh.first);
  EXPECT_EQ(reused.second, fresh.second);
  EXPECT_EQ(run(all_bytes, ws_all, tokens, c.T).second, none.second);
}

TEST_P(FastModel, PackedWeightsGiveTheSameBitsAndFollowWeightChanges) {
  // sequence_loss packs the weights once per call for the native GEMM; that must give the
  // same bits as packing inside every product, and a workspace reused after the weights
  // changed (an optimizer step) must not use the old packing.
  const ModelCase c = GetParam();
  const ModelConfig cfg = make_config(c);
  Model<float> m = cast_model<float>(random_model(cfg, 21));
  const auto tokens = random_tokens(c.B * c.T, cfg.vocab_size, 22);
  ForwardContext<float> ctx(cfg);
  ctx.threads = 2;
  auto run = [&](int64_t max_packed, SequenceWorkspace<float>& ws, bool with_grads) {
    SequenceOptions o;
    o.max_packed_weight_bytes = max_packed;
    std::vector<float> g(size_t(m.layout.total), 0.0f);
    const double l = sequence_loss<float>(m, ctx, tokens.data(), c.B, c.T,
                                          with_grads ? g.data() : nullptr, o, ws)
                         .loss_sum;
    return std::make_pair(l, g);
  };
  SequenceWorkspace<float> packed_ws, plain_ws;
  const auto packed = run(int64_t(1) << 30, packed_ws, true);
  EXPECT_EQ(packed_ws.packed.empty(), !ops::sgemm_native_available());
  const auto plain = run(0, plain_ws, true);
  EXPECT_TRUE(plain_ws.packed.empty());
  EXPECT_EQ(packed.first, plain.first);
  EXPECT_EQ(packed.second, plain.second);
  EXPECT_EQ(run(int64_t(1) << 30, packed_ws, false).first, run(0, plain_ws, false).first);

  for (auto& w : m.weights) w *= 0.9f;  // new weights, the same workspaces
  const auto packed2 = run(int64_t(1) << 30, packed_ws, true);
  SequenceWorkspace<float> fresh_ws;
  const auto plain2 = run(0, fresh_ws, true);
  EXPECT_NE(packed2.first, packed.first);
  EXPECT_EQ(packed2.first, plain2.first);
  EXPECT_EQ(packed2.second, plain2.second);
}

TEST_P(FastModel, FloatFastPathMatchesDoubleReference) {
  const ModelCase c = GetParam();
  const Float64Reference ref(c, 5);
  const auto fast = float_loss_and_grad(ref.mf, ref.tokens.data(), c.B, c.T, Precision::FP32, false,
                                        SequenceOptions{}.max_packed_weight_bytes);
  EXPECT_NEAR(fast.loss, ref.loss, 1e-5 * std::abs(ref.loss));
  EXPECT_LT(rel_err(fast.grad, ref.grad), 1e-4);
}

// Precision::BF16 (SPEC §8): the fused threaded path against the plain layer code under the
// same policy (both take bf16 inputs into fp32 sums, so they differ by fp32 summation order and
// the odd bf16 rounding that order flips), packed against unpacked (the same kernel on the same
// packing: the same bits), and against the float64 reference: the loss within 1% and every
// parameter's gradient with cosine similarity at least 0.99 (issue #27's accuracy bars).
TEST_P(FastModel, Bf16PolicyAgreesAcrossPathsAndStaysNearFloat64) {
  const ModelCase c = GetParam();
  const Float64Reference ref(c, 41);
  const double ld = ref.loss;
  auto run = [&](bool reference, int64_t max_packed) {
    const LossAndGrad r = float_loss_and_grad(ref.mf, ref.tokens.data(), c.B, c.T, Precision::BF16,
                                              reference, max_packed);
    EXPECT_EQ(r.packed, !(reference || max_packed == 0 || !ops::bf16_native_available()));
    return r;
  };
  const auto fast = run(false, int64_t(1) << 30);
  const auto unpacked = run(false, 0);
  const auto plain = run(true, 0);
  EXPECT_EQ(fast.loss, unpacked.loss);
  EXPECT_EQ(fast.grad, unpacked.grad);
  EXPECT_NEAR(fast.loss, plain.loss, 1e-4 * std::abs(plain.loss));
  EXPECT_LT(rel_err(fast.grad, plain.grad), 5e-3);

  EXPECT_NEAR(fast.loss, ld, 0.01 * std::abs(ld));
  EXPECT_GT(std::abs(fast.loss - ld), 1e-7 * std::abs(ld)) << "bf16 rounded nothing";
  expect_tensor_cosines(ref.md.layout, fast.grad, ref.grad, 0.99);
}

// The emulated bf16 path (what a CPU without AVX512-BF16 runs) through the whole model, on a CPU
// with the kernel: the same rounded inputs summed in fp32 in another order, so it agrees with
// the native kernel far more closely than fp32 does, and holds the float64 bars.
TEST_P(FastModel, Bf16EmulationAgreesWithTheNativeKernel) {
  if (!ops::bf16_native_available())
    GTEST_SKIP() << "no AVX512-BF16 here: the test above runs the emulation";
  const ModelCase c = GetParam();
  const Float64Reference ref(c, 43);
  auto run = [&](Precision p, bool reference, int64_t max_packed) {
    return float_loss_and_grad(ref.mf, ref.tokens.data(), c.B, c.T, p, reference, max_packed);
  };
  const int64_t budget = int64_t(1) << 30;
  const auto native = run(Precision::BF16, false, budget);
  const auto fp32 = run(Precision::FP32, false, budget);
  const ForcedBf16Emulation emulation;
  ASSERT_FALSE(ops::bf16_native_available());
  const auto fast = run(Precision::BF16, false, budget);
  const auto plain = run(Precision::BF16, true, 0);
  EXPECT_FALSE(fast.packed) << "no bf16 packing without the kernel";
  // Measured: gradients 2e-7 .. 1.3e-4 apart (relative), where fp32's are 0.04 .. 0.08 away.
  const double apart = rel_err(fast.grad, native.grad);
  EXPECT_NEAR(fast.loss, native.loss, 1e-5 * std::abs(native.loss));
  EXPECT_LT(apart, 2e-3);
  EXPECT_GT(rel_err(fp32.grad, native.grad), 10 * apart) << "the emulation rounded nothing";
  EXPECT_NEAR(fast.loss, plain.loss, 1e-4 * std::abs(plain.loss));
  EXPECT_LT(rel_err(fast.grad, plain.grad), 5e-3);

  EXPECT_NEAR(fast.loss, ref.loss, 0.01 * std::abs(ref.loss));
  expect_tensor_cosines(ref.md.layout, fast.grad, ref.grad, 0.99);
}

TEST_P(FastModel, ChunkedPrefillThroughTheCacheMatchesWholeSegments) {
  // Chunks of 7 tokens through the streaming cache (fast path, p0 > 0) give the logits and
  // the memory of whole-segment forwards.
  const ModelCase c = GetParam();
  const ModelConfig cfg = make_config(c);
  const Model<double> m = random_model(cfg, 7);
  const auto tokens = random_tokens(c.T, cfg.vocab_size, 8);
  ForwardContext<double> ctx(cfg);
  ctx.threads = 2;
  MemoryState<double> whole = MemoryState<double>::zeros(cfg, 1);
  SegmentActs<double> acts;
  std::vector<double> want;
  for (int64_t s = 0; s * c.seg < c.T; ++s) {
    const int64_t n = std::min(c.seg, c.T - s * c.seg);
    forward_chunk(m, ctx, tokens.data() + s * c.seg, 1, n, whole, acts);
    want.insert(want.end(), acts.logits.begin(), acts.logits.end());
  }
  MemoryState<double> streamed = MemoryState<double>::zeros(cfg, 1);
  KVCache<double> cache = KVCache<double>::make(cfg);
  std::vector<double> got;
  for (int64_t t = 0; t < c.T;) {
    // Chunks never cross a segment boundary.
    const int64_t n = std::min<int64_t>({7, c.T - t, c.seg - cache.pos});
    forward_chunk(m, ctx, tokens.data() + t, 1, n, streamed, acts, &cache);
    got.insert(got.end(), acts.logits.begin(), acts.logits.end());
    t += n;
  }
  fold_cache_into_memory(m, cache, streamed);
  EXPECT_LT(rel_err(got, want), 1e-11);
  for (size_t i = 0; i < whole.M.size(); ++i) ASSERT_NEAR(streamed.M[i], whole.M[i], 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Configs, FastModel, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.name); });
