// model::SequenceOptions::loss_mask: the masked loss, its full-BPTT gradient against finite
// differences (double), and its consistency with the unmasked loss. Also ::token_losses and
// ::interrupt.
#include <gtest/gtest.h>

#include "model/bptt.hpp"
#include "ops/cross_entropy.hpp"
#include "util/gradcheck.hpp"
#include "util/random_model.hpp"
#include "util/nan_max.hpp"

using namespace infini;
using namespace infini::model;
using namespace infini::testing;

namespace {

ModelConfig mask_config(MemoryUpdate rule) {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100.0;
  c.segment_length = 3;
  c.memory_update = rule;
  return c;
}

Model<double> random_model(const ModelConfig& c, uint64_t seed) {
  return noisy_model(c, seed, 0.5, 0.3, 3, {ParamKind::Gate, ParamKind::Norm});
}

std::vector<int32_t> tokens_for(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(g() % uint64_t(vocab));
  return t;
}

}  // namespace

TEST(LossMask, GradientMatchesFiniteDifferencesOfTheMaskedLoss) {
  for (MemoryUpdate rule : {MemoryUpdate::Linear, MemoryUpdate::Delta}) {
    const ModelConfig cfg = mask_config(rule);
    Model<double> m = random_model(cfg, 3);
    const int64_t B = 2, T = 8;
    const auto tokens = tokens_for(B * T, cfg.vocab_size, 5);
    // Only a few answer positions count, some in later segments (so the gradient must flow
    // back through the memory to reach earlier segments' weights use).
    std::vector<uint8_t> mask(size_t(B * T), 0);
    mask[5] = mask[6] = 1;    // sequence 0, segment 1 and 2
    mask[size_t(T + 7)] = 1;  // sequence 1, its last position: predicts nothing
    mask[size_t(T + 4)] = 1;  // sequence 1, segment 1
    SequenceOptions opts;
    opts.loss_mask = mask.data();
    ForwardContext<double> ctx(cfg);
    SequenceWorkspace<double> ws;
    std::vector<double> grads(size_t(m.layout.total), 0.0);
    const LossResult r = sequence_loss<double>(m, ctx, tokens.data(), B, T, grads.data(), opts, ws);
    EXPECT_EQ(r.predicted, 3);  // the last position never predicts
    auto f = [&] {
      return sequence_loss<double>(m, ctx, tokens.data(), B, T, nullptr, opts, ws).mean();
    };
    const auto numeric = numeric_grad(f, m.weights, 1e-5);
    EXPECT_LT(rel_err(grads, numeric, 1e-6), 1e-6) << memory_update_name(rule);
    double nonzero = 0;
    for (double g : grads) nonzero = nan_max(nonzero, std::abs(g));
    EXPECT_GT(nonzero, 1e-4);
  }
}

TEST(LossMask, MaskedLossIsTheSumOverTheKeptPositions) {
  const ModelConfig cfg = mask_config(MemoryUpdate::Delta);
  const Model<double> m = random_model(cfg, 9);
  const int64_t T = 9;
  const auto tokens = tokens_for(T, cfg.vocab_size, 2);
  // Per-position losses from one forward per segment with the state carried.
  ForwardContext<double> ctx(cfg);
  MemoryState<double> state = MemoryState<double>::zeros(cfg, 1);
  SegmentActs<double> acts;
  std::vector<double> per_pos;
  for (int64_t s = 0; s < T; s += cfg.segment_length) {
    const int64_t n = std::min(cfg.segment_length, T - s);
    forward_chunk(m, ctx, tokens.data() + s, 1, n, state, acts);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t target = s + i + 1 < T ? tokens[size_t(s + i + 1)] : -1;
      per_pos.push_back(ops::cross_entropy<double>(acts.logits.data() + i * cfg.vocab_size, &target,
                                                   1, cfg.vocab_size, nullptr, 0));
    }
  }
  std::vector<uint8_t> mask = {0, 1, 1, 0, 0, 1, 0, 1, 1};
  SequenceOptions opts;
  opts.loss_mask = mask.data();
  SequenceWorkspace<double> ws;
  const LossResult r = sequence_loss<double>(m, ctx, tokens.data(), 1, T, nullptr, opts, ws);
  double want = 0;
  for (int64_t t = 0; t + 1 < T; ++t) want += mask[size_t(t)] ? per_pos[size_t(t)] : 0;
  EXPECT_EQ(r.predicted, 4);
  EXPECT_NEAR(r.loss_sum, want, 1e-12 * want);

  // token_losses: each kept position's own loss, 0 elsewhere; loss_sum unchanged.
  std::vector<double> each(size_t(T), -1.0);
  opts.token_losses = each.data();
  const LossResult r2 = sequence_loss<double>(m, ctx, tokens.data(), 1, T, nullptr, opts, ws);
  EXPECT_EQ(r2.loss_sum, r.loss_sum);
  for (int64_t t = 0; t < T; ++t)
    EXPECT_NEAR(each[size_t(t)], t + 1 < T && mask[size_t(t)] ? per_pos[size_t(t)] : 0.0, 1e-12)
        << t;
  opts.token_losses = nullptr;

  // An all-ones mask is the unmasked loss and gradient, bit for bit.
  std::vector<uint8_t> ones(size_t(T), 1);
  opts.loss_mask = ones.data();
  std::vector<double> g1(size_t(m.layout.total), 0.0), g0(g1);
  const LossResult a = sequence_loss<double>(m, ctx, tokens.data(), 1, T, g1.data(), opts, ws);
  const LossResult b = sequence_loss<double>(m, ctx, tokens.data(), 1, T, g0.data(), {}, ws);
  EXPECT_EQ(a.loss_sum, b.loss_sum);
  EXPECT_EQ(a.predicted, b.predicted);
  EXPECT_EQ(g1, g0);
}

TEST(SequenceInterrupt, ASetFlagStopsLossAndGradientAndAClearOneChangesNothing) {
  const ModelConfig cfg = mask_config(MemoryUpdate::Linear);
  const Model<double> m = random_model(cfg, 4);
  const int64_t T = 10;
  const auto tokens = tokens_for(T, cfg.vocab_size, 6);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  std::vector<double> g0(size_t(m.layout.total), 0.0), g1(g0);
  const LossResult want = sequence_loss<double>(m, ctx, tokens.data(), 1, T, g0.data(), {}, ws);
  std::atomic<bool> flag{false};
  SequenceOptions opts;
  opts.interrupt = &flag;
  const LossResult got = sequence_loss<double>(m, ctx, tokens.data(), 1, T, g1.data(), opts, ws);
  EXPECT_EQ(got.loss_sum, want.loss_sum);
  EXPECT_EQ(g1, g0);
  flag = true;
  EXPECT_THROW(sequence_loss<double>(m, ctx, tokens.data(), 1, T, nullptr, opts, ws), Interrupted);
  EXPECT_THROW(sequence_loss<double>(m, ctx, tokens.data(), 1, T, g1.data(), opts, ws),
               Interrupted);
}
