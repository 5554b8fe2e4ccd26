// Whole-model checks: full-BPTT gradients against finite differences (double), chunked and
// streamed evaluation against one call, batch independence.
#include <gtest/gtest.h>

#include "model/bptt.hpp"
#include "ops/cross_entropy.hpp"
#include "util/gradcheck.hpp"
#include "util/random_model.hpp"

using namespace infini;
using namespace infini::model;
using namespace infini::testing;

namespace {

struct Case {
  const char* name;
  MemoryUpdate rule;
  bool use_memory, bias, tied;
  int64_t heads, kv_heads, head_dim, seg, T;
};

ModelConfig make_config(const Case& c) {
  ModelConfig cfg;
  cfg.model_type = c.bias ? "qwen2" : "llama";
  cfg.vocab_size = 11;
  cfg.hidden_size = 8;
  cfg.intermediate_size = 12;
  cfg.num_layers = 2;
  cfg.num_heads = c.heads;
  cfg.num_kv_heads = c.kv_heads;
  cfg.head_dim = c.head_dim;
  cfg.rms_norm_eps = 1e-5;
  cfg.rope_theta = 100.0;
  cfg.tie_word_embeddings = c.tied;
  cfg.attention_bias = c.bias;
  cfg.segment_length = c.seg;
  cfg.memory_update = c.rule;
  cfg.use_memory = c.use_memory;
  return cfg;
}

// Random weights large enough that every path (memory, gates, biases) moves the loss.
Model<double> random_model(const ModelConfig& cfg, uint64_t seed) {
  return noisy_model(cfg, seed, 0.5, 0.3, 3,
                     {ParamKind::Norm, ParamKind::Bias, ParamKind::Gate, ParamKind::Router});
}

const Case kCases[] = {
    {"linear_mha_tied", MemoryUpdate::Linear, true, false, true, 2, 2, 4, 3, 8},
    {"delta_gqa_bias", MemoryUpdate::Delta, true, true, false, 4, 2, 4, 3, 10},
    {"delta_mqa_headdim", MemoryUpdate::Delta, true, false, false, 2, 1, 6, 4, 9},
    {"linear_gqa_bias_tied", MemoryUpdate::Linear, true, true, true, 4, 2, 2, 2, 7},
    {"local_only", MemoryUpdate::Linear, false, false, false, 2, 2, 4, 3, 8},
};

class ModelGrad : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(ModelGrad, FullBpttMatchesFiniteDifferences) {
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  Model<double> m = random_model(cfg, 7);
  const int64_t B = 2;
  const auto tokens = random_tokens(B * c.T, cfg.vocab_size, 11);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  std::vector<double> grads(size_t(m.layout.total), 0.0);
  sequence_loss<double>(m, ctx, tokens.data(), B, c.T, grads.data(), {}, ws);
  auto f = [&] { return sequence_loss<double>(m, ctx, tokens.data(), B, c.T, nullptr, {}, ws).mean(); };
  const auto numeric = numeric_grad(f, m.weights, 1e-5);
  for (const auto& p : m.layout.params) {
    std::vector<double> a(grads.begin() + p.offset, grads.begin() + p.offset + p.numel);
    std::vector<double> b(numeric.begin() + p.offset, numeric.begin() + p.offset + p.numel);
    EXPECT_LT(rel_err(a, b, 1e-6), 1e-6) << c.name << " " << p.name;
  }
}

TEST_P(ModelGrad, MemoryChangesTheLoss) {
  // Guards the test above against a memory path that silently does nothing.
  const Case c = GetParam();
  if (!c.use_memory) GTEST_SKIP();
  ModelConfig cfg = make_config(c);
  Model<double> m = random_model(cfg, 7);
  const auto tokens = random_tokens(c.T, cfg.vocab_size, 11);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  const double with = sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, nullptr, {}, ws).mean();
  // Same weights, beta -> -inf closes the gates: the memory must have mattered.
  for (const auto& lo : m.layout.layers)
    for (int64_t h = 0; h < cfg.num_heads; ++h) m.weights[size_t(lo.beta + h)] = -60;
  const double closed = sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, nullptr, {}, ws).mean();
  EXPECT_GT(std::abs(with - closed), 1e-4);
}

TEST_P(ModelGrad, FloatMatchesDouble) {
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  Model<double> md = random_model(cfg, 3);
  Model<float> mf = cast_model<float>(md);
  const auto tokens = random_tokens(2 * c.T, cfg.vocab_size, 5);
  ForwardContext<double> cd(cfg);
  ForwardContext<float> cf(cfg);
  SequenceWorkspace<double> wd;
  SequenceWorkspace<float> wf;
  std::vector<double> gd(size_t(md.layout.total), 0.0);
  std::vector<float> gf(size_t(md.layout.total), 0.0f);
  const double ld = sequence_loss<double>(md, cd, tokens.data(), 2, c.T, gd.data(), {}, wd).mean();
  const double lf = sequence_loss<float>(mf, cf, tokens.data(), 2, c.T, gf.data(), {}, wf).mean();
  EXPECT_NEAR(lf, ld, 1e-5 * std::abs(ld));
  std::vector<double> gfd(gf.begin(), gf.end());
  EXPECT_LT(rel_err(gfd, gd), 1e-4);
}

TEST_P(ModelGrad, ChunkedCallsEqualOneCall) {
  // One sequence_loss over all segments == one forward_chunk per segment with carried state.
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const Model<double> m = random_model(cfg, 9);
  const auto tokens = random_tokens(c.T, cfg.vocab_size, 13);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  MemoryState<double> whole = MemoryState<double>::zeros(cfg, 1);
  const double loss = sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, nullptr, {}, ws, &whole).loss_sum;

  MemoryState<double> state = MemoryState<double>::zeros(cfg, 1);
  SegmentActs<double> acts;
  std::vector<double> all_logits;
  for (int64_t s = 0; s * c.seg < c.T; ++s) {
    const int64_t n = std::min(c.seg, c.T - s * c.seg);
    forward_chunk(m, ctx, tokens.data() + s * c.seg, 1, n, state, acts);
    all_logits.insert(all_logits.end(), acts.logits.begin(), acts.logits.end());
  }
  std::vector<int32_t> targets(tokens.begin() + 1, tokens.end());
  targets.push_back(-1);
  const double chunked = ops::cross_entropy<double>(all_logits.data(), targets.data(), c.T,
                                                    cfg.vocab_size, nullptr, 0);
  EXPECT_NEAR(chunked, loss, 1e-12 * std::abs(loss));
  EXPECT_EQ(state.M, whole.M);
  EXPECT_EQ(state.z, whole.z);

  // Token-by-token streaming through the segment cache gives the same logits and final state.
  MemoryState<double> streamed = MemoryState<double>::zeros(cfg, 1);
  KVCache<double> cache = KVCache<double>::make(cfg);
  for (int64_t t = 0; t < c.T; ++t) {
    forward_chunk(m, ctx, tokens.data() + t, 1, 1, streamed, acts, &cache);
    for (int64_t j = 0; j < cfg.vocab_size; ++j)
      EXPECT_NEAR(acts.logits[size_t(j)], all_logits[size_t(t * cfg.vocab_size + j)], 1e-10)
          << "token " << t;
  }
  fold_cache_into_memory(m, cache, streamed);
  for (size_t i = 0; i < whole.M.size(); ++i) EXPECT_NEAR(streamed.M[i], whole.M[i], 1e-10);
  for (size_t i = 0; i < whole.z.size(); ++i) EXPECT_NEAR(streamed.z[i], whole.z[i], 1e-10);
}

TEST_P(ModelGrad, SequencesInABatchAreIndependent) {
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const Model<double> m = random_model(cfg, 21);
  const auto tokens = random_tokens(3 * c.T, cfg.vocab_size, 17);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  MemoryState<double> batched = MemoryState<double>::zeros(cfg, 3);
  std::vector<double> g3(size_t(m.layout.total), 0.0);
  const LossResult r3 = sequence_loss<double>(m, ctx, tokens.data(), 3, c.T, g3.data(),
                                              {0, 1.0}, ws, &batched);
  double sum = 0;
  std::vector<double> g1(size_t(m.layout.total), 0.0);
  for (int64_t b = 0; b < 3; ++b) {
    MemoryState<double> one = MemoryState<double>::zeros(cfg, 1);
    sum += sequence_loss<double>(m, ctx, tokens.data() + b * c.T, 1, c.T, g1.data(), {0, 1.0},
                                 ws, &one).loss_sum;
    MemoryState<double> slice = MemoryState<double>::zeros(cfg, 1);
    batched.copy_sequence(b, slice, 0);
    for (size_t i = 0; i < one.M.size(); ++i) EXPECT_NEAR(slice.M[i], one.M[i], 1e-10);
  }
  EXPECT_NEAR(r3.loss_sum, sum, 1e-10 * std::abs(sum));
  EXPECT_LT(rel_err(g3, g1), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelGrad, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Bptt, TruncationCutsOnlyTheMemoryGradient) {
  const Case c = kCases[1];
  const ModelConfig cfg = make_config(c);
  const Model<double> m = random_model(cfg, 5);
  const auto tokens = random_tokens(c.T, cfg.vocab_size, 3);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  std::vector<double> full(size_t(m.layout.total), 0.0), cut(full), whole_window(full);
  const double l_full = sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, full.data(), {}, ws).loss_sum;
  const double l_cut = sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, cut.data(), {1, 0}, ws).loss_sum;
  sequence_loss<double>(m, ctx, tokens.data(), 1, c.T, whole_window.data(), {100, 0}, ws);
  EXPECT_EQ(l_full, l_cut);            // the forward is the same
  EXPECT_GT(rel_err(cut, full), 1e-6); // the gradient is not
  EXPECT_LT(rel_err(whole_window, full), 1e-14);
}
