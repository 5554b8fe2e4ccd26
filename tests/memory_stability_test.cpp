// Numerical safety of the compressive memory over long streams (docs/hardening.md, "Numerics").
// A tiny model streams 2^20 tokens through model::forward_chunk (compute_logits = false, as
// long-context inference does) in float32 and, in lockstep, in float64. Checked: M and z stay
// finite, z stays positive and within its analytic bound, and the float32 state and the final
// logits stay close to the float64 ones. Inputs include the worst case for rounding in the
// running sums: one token repeated (every step adds the same value to z).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "model/forward.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;
using namespace infini;
using namespace infini::model;

namespace {

constexpr int64_t kTokens = int64_t(1) << 20;

ModelConfig tiny_config(MemoryUpdate rule) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 258;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.segment_length = 512;
  c.memory_update = rule;
  return c;
}

struct Stats {
  double z_rel = 0;   // max_j |z32 - z64| / z64
  double M_rel = 0;   // ||M32 - M64||_F / ||M64||_F
  double logit = 0;   // max |logits32 - logits64| on the last segment
  double z_max = 0;   // largest z entry (float64 run)
  double M_max = 0;   // largest |M| entry (float64 run)
};

template <class T>
bool all_finite(const std::vector<T>& v) {
  for (T x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Streams `tokens` through the float32 and float64 versions of one model, segment by segment.
// The last segment computes logits. Fails the test on any non-finite or out-of-bound state.
Stats stream(const ModelConfig& cfg, double init_std, const std::vector<int32_t>& tokens) {
  const Model<float> mf = init_model(cfg, {/*seed=*/3, init_std, 0.0});
  const Model<double> md = cast_model<double>(mf);
  const ForwardContext<float> cf(cfg);
  const ForwardContext<double> cd(cfg);
  MemoryState<float> sf = MemoryState<float>::zeros(cfg, 1);
  MemoryState<double> sd = MemoryState<double>::zeros(cfg, 1);
  SegmentActs<float> af;
  SegmentActs<double> ad;
  const int64_t N = cfg.segment_length, T = int64_t(tokens.size());
  for (int64_t s = 0; s * N < T; ++s) {
    const int64_t n = std::min(N, T - s * N);
    const bool last = (s + 1) * N >= T;
    forward_chunk<float>(mf, cf, tokens.data() + s * N, 1, n, sf, af, nullptr, last);
    forward_chunk<double>(md, cd, tokens.data() + s * N, 1, n, sd, ad, nullptr, last);
    if (s % 256 == 0 || last) {
      EXPECT_TRUE(all_finite(sf.M) && all_finite(sf.z)) << "non-finite state at segment " << s;
      if (::testing::Test::HasFailure()) return {};
    }
  }
  Stats st;
  double num = 0, den = 0;
  for (size_t i = 0; i < sd.M.size(); ++i) {
    num += (sf.M[i] - sd.M[i]) * (sf.M[i] - sd.M[i]);
    den += sd.M[i] * sd.M[i];
    st.M_max = nan_max(st.M_max, std::abs(sd.M[i]));
  }
  st.M_rel = std::sqrt(num / den);
  for (size_t i = 0; i < sd.z.size(); ++i) {
    EXPECT_GT(sf.z[i], 0.0f) << "z entries sum sigma(k) > 0";
    st.z_rel = nan_max(st.z_rel, std::abs(sf.z[i] - sd.z[i]) / sd.z[i]);
    st.z_max = nan_max(st.z_max, sd.z[i]);
  }
  for (size_t i = 0; i < ad.logits.size(); ++i)
    st.logit = nan_max(st.logit, std::abs(double(af.logits[i]) - ad.logits[i]));
  EXPECT_TRUE(all_finite(af.logits));
  return st;
}

// Bound on z: each token adds sigma(k) <= 1 + max(k, 0) per entry, and |k_j| is at most
// ||a||_2 ||Wk_j||_2 with ||a||_2 <= sqrt(D) max|w_in| after RMSNorm.
double z_bound(const ModelConfig& cfg, double init_std, int64_t T) {
  const Model<float> m = init_model(cfg, {3, init_std, 0.0});
  const LayerOffsets& o = m.layout.layers[0];
  double wmax = 0;
  for (int64_t i = 0; i < cfg.hidden_size; ++i) wmax = std::max(wmax, std::abs(double(m.at(o.in_norm)[i])));
  double kmax = 0;
  for (int64_t r = 0; r < cfg.kv_width(); ++r) {
    double s = 0;
    for (int64_t c = 0; c < cfg.hidden_size; ++c) {
      const double w = m.at(o.wk)[r * cfg.hidden_size + c];
      s += w * w;
    }
    kmax = std::max(kmax, std::sqrt(s) * std::sqrt(double(cfg.hidden_size)) * wmax);
  }
  return double(T) * (1.0 + kmax);
}

std::vector<int32_t> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(g() % 256);
  return t;
}

void report(const char* name, const Stats& s) {
  std::printf("[ stats    ] %s: z_rel %.3g  M_rel %.3g  logit_abs %.3g  z_max %.4g  M_max %.4g\n",
              name, s.z_rel, s.M_rel, s.logit, s.z_max, s.M_max);
}

}  // namespace

// Random bytes, linear rule: z grows linearly to about 1e6; float32 tracks float64 closely.
TEST(MemoryStability, LinearRandomMillionTokens) {
  const ModelConfig cfg = tiny_config(MemoryUpdate::Linear);
  const Stats s = stream(cfg, 0.5, random_tokens(kTokens, 1));
  report("linear random", s);
  EXPECT_LT(s.z_max, z_bound(cfg, 0.5, kTokens));
  EXPECT_GT(s.z_max, double(kTokens) * 0.1);  // really accumulated (sigma(k) > 0.1 here)
  EXPECT_LT(s.z_rel, 1e-4);
  EXPECT_LT(s.M_rel, 1e-4);
  EXPECT_LT(s.logit, 1e-3);
}

// One token repeated: every step adds the same sigma(k) to z and the same outer product to M,
// so rounding errors do not cancel. The worst case for float32 running sums.
TEST(MemoryStability, LinearRepeatedTokenMillionTokens) {
  const ModelConfig cfg = tiny_config(MemoryUpdate::Linear);
  const Stats s = stream(cfg, 0.5, std::vector<int32_t>(size_t(kTokens), 'e'));
  report("linear repeated", s);
  EXPECT_LT(s.z_max, z_bound(cfg, 0.5, kTokens));
  EXPECT_LT(s.z_rel, 1e-4);
  EXPECT_LT(s.M_rel, 1e-4);
  EXPECT_LT(s.logit, 1e-3);
}

// Large weights (init std 4): sigma(k) reaches tens and |M| 1e8 after 2^20 tokens, still far
// from float max. Half the tokens keep the test quick (std::exp dominates in float64).
TEST(MemoryStability, LinearLargeWeightsHalfMillionTokens) {
  const ModelConfig cfg = tiny_config(MemoryUpdate::Linear);
  const Stats s = stream(cfg, 4.0, random_tokens(kTokens / 2, 2));
  report("linear large weights", s);
  EXPECT_LT(s.z_max, z_bound(cfg, 4.0, kTokens / 2));
  EXPECT_LT(s.z_rel, 1e-4);
  EXPECT_LT(s.M_rel, 1e-4);
}

// Delta rule: the update subtracts what memory already returns, but that read is normalised by
// sigma(k) z, so M still grows about as fast as z (linearly in tokens).
TEST(MemoryStability, DeltaRandomMillionTokens) {
  const ModelConfig cfg = tiny_config(MemoryUpdate::Delta);
  const Stats s = stream(cfg, 0.5, random_tokens(kTokens, 3));
  report("delta random", s);
  EXPECT_LT(s.z_max, z_bound(cfg, 0.5, kTokens));
  EXPECT_LT(s.z_rel, 1e-4);
  EXPECT_LT(s.M_rel, 1e-3);
  EXPECT_LT(s.logit, 1e-3);
}
