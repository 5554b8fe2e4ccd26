// State passing (src/train/background_state.hpp): the chains' memory equals one long read of
// the background text, rows start from the chains or from the empty memory as documented,
// chains restart within their cycle, resume is exact, and the trainer's gradient starts from
// the batch's initial state.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "model/bptt.hpp"
#include "model/model.hpp"
#include "train/background_state.hpp"
#include "train/trainer.hpp"

using namespace infini;
using namespace infini::train;

namespace {

model::ModelConfig tiny_config() {
  model::ModelConfig c;
  c.vocab_size = 258;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.segment_length = 8;
  c.memory_update = model::MemoryUpdate::Delta;
  return c;
}

// Every sequence is the same 24 tokens; the test is about the state, not the data.
class FixedSource final : public BatchSource {
 public:
  void next(int64_t batch, int64_t seq_len, Batch& out) override {
    out.batch = batch;
    out.seq_len = seq_len;
    out.tokens.resize(size_t(batch * seq_len));
    for (size_t i = 0; i < out.tokens.size(); ++i) out.tokens[i] = int32_t((i * 7 + calls) % 250);
    out.loss_mask.clear();
    ++calls;
  }
  nlohmann::json state() const override { return {{"calls", calls}}; }
  void restore(const nlohmann::json& s) override { calls = s.at("calls").get<int64_t>(); }
  std::string fingerprint() const override { return "fixed"; }
  int64_t calls = 0;
};

// Background text: token i is a function of i alone, so any window can be produced.
void stream(int64_t start, int64_t count, int32_t* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = int32_t(((start + i) * 31 + 5) % 200);
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

float max_abs(const std::vector<float>& a) {
  float m = 0;
  for (float x : a) m = std::max(m, std::fabs(x));
  return m;
}

}  // namespace

TEST(BackgroundState, ChainsEqualOneLongReadOfTheBackgroundText) {
  const model::ModelConfig c = tiny_config();
  const model::Model<float> m = model::init_model(c, {3, 0.3, 0.0});
  FixedSource inner;
  BackgroundOptions o;
  o.chains = 2;
  o.tokens_per_step = 16;
  o.max_tokens = 1 << 20;  // no restart within this test
  o.share = 1.0;
  BackgroundStateSource src(inner, c, [&]() -> const model::Model<float>& { return m; }, stream, o);
  Batch b;
  const int steps = 3;
  for (int s = 0; s < steps; ++s) src.next(4, 24, b);
  ASSERT_EQ(src.ages(), (std::vector<int64_t>{48, 48}));

  // The same 48 tokens read in one call from the empty memory (batch 1).
  std::vector<int32_t> text(48);
  stream(0, 48, text.data());
  model::ForwardContext<float> ctx(c);
  model::SequenceWorkspace<float> ws;
  model::MemoryState<float> direct = model::MemoryState<float>::zeros(c, 1);
  model::sequence_loss<float>(m, ctx, text.data(), 1, 48, nullptr, {}, ws, &direct);
  ASSERT_GT(max_abs(direct.z), 1.0f);
  for (int64_t chain = 0; chain < 2; ++chain) {
    model::MemoryState<float> one = model::MemoryState<float>::zeros(c, 1);
    src.chain_states().copy_sequence(chain, one, 0);
    EXPECT_LT(max_abs_diff(one.M, direct.M), 1e-5f * max_abs(direct.M)) << "chain " << chain;
    EXPECT_LT(max_abs_diff(one.z, direct.z), 1e-5f * max_abs(direct.z)) << "chain " << chain;
  }
  // Rows 0..3 (share 1) start from chains 0, 1, 0, 1.
  ASSERT_EQ(b.initial_state.batch, 4);
  for (int64_t row = 0; row < 4; ++row) {
    model::MemoryState<float> one = model::MemoryState<float>::zeros(c, 1);
    b.initial_state.copy_sequence(row, one, 0);
    model::MemoryState<float> want = model::MemoryState<float>::zeros(c, 1);
    src.chain_states().copy_sequence(row % 2, want, 0);
    EXPECT_EQ(one.M, want.M);
    EXPECT_EQ(one.z, want.z);
  }
}

TEST(BackgroundState, ShareLeavesTheOtherRowsEmptyAndOffChangesNothing) {
  const model::ModelConfig c = tiny_config();
  const model::Model<float> m = model::init_model(c, {3, 0.3, 0.0});
  FixedSource inner;
  BackgroundOptions o;
  o.chains = 3;
  o.tokens_per_step = 8;
  o.max_tokens = 64;
  o.share = 0.5;
  BackgroundStateSource src(inner, c, [&]() -> const model::Model<float>& { return m; }, stream, o);
  Batch b;
  src.next(6, 16, b);
  const int64_t zz = c.num_kv_heads * c.head_dim;
  for (int64_t row = 0; row < 6; ++row) {
    float s = 0;
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (int64_t i = 0; i < zz; ++i) s += std::fabs(b.initial_state.z_layer(l)[row * zz + i]);
    if (row < 3)
      EXPECT_GT(s, 0.0f) << "row " << row << " should start from a chain";
    else
      EXPECT_EQ(s, 0.0f) << "row " << row << " should start from the empty memory";
  }
  FixedSource inner2;
  BackgroundStateSource off(inner2, c, [&]() -> const model::Model<float>& { return m; }, stream,
                            BackgroundOptions{});
  off.next(6, 16, b);
  EXPECT_TRUE(b.initial_state.M.empty());
  EXPECT_EQ(off.fingerprint(), "fixed");
  EXPECT_EQ(off.state(), inner2.state());
}

TEST(BackgroundState, ChainsRestartWithinTheirCycleAndResumeExactly) {
  const model::ModelConfig c = tiny_config();
  const model::Model<float> m = model::init_model(c, {5, 0.3, 0.0});
  BackgroundOptions o;
  o.chains = 2;
  o.tokens_per_step = 8;
  o.max_tokens = 48;
  o.share = 1.0;
  o.seed = 9;
  FixedSource inner;
  BackgroundStateSource src(inner, c, [&]() -> const model::Model<float>& { return m; }, stream, o);
  Batch b;
  bool restarted = false;
  int64_t before = 0;
  for (int s = 0; s < 12; ++s) {
    src.next(2, 16, b);
    for (int64_t a : src.ages()) {
      EXPECT_GE(a, 8);
      EXPECT_LE(a, 48);
    }
    if (src.ages()[0] < before) restarted = true;
    before = src.ages()[0];
  }
  EXPECT_TRUE(restarted) << "12 steps of 8 tokens must pass a cycle of at most 48";

  const nlohmann::json saved = nlohmann::json::parse(src.state().dump());
  Batch want;
  src.next(2, 16, want);
  FixedSource inner2;
  BackgroundStateSource again(inner2, c, [&]() -> const model::Model<float>& { return m; }, stream,
                              o);
  again.restore(saved);
  Batch got;
  again.next(2, 16, got);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.initial_state.M, want.initial_state.M);
  EXPECT_EQ(got.initial_state.z, want.initial_state.z);
  EXPECT_EQ(again.ages(), src.ages());

  // A state from a run without chains, or with another count, is refused by name.
  EXPECT_THROW(again.restore(inner2.state()), Error);
  nlohmann::json bad = saved;
  bad["M"] = "zz";
  EXPECT_THROW(again.restore(bad), Error);
}

TEST(BackgroundState, BadOptionsAreRefused) {
  const model::ModelConfig c = tiny_config();
  const model::Model<float> m = model::init_model(c, {1, 0.3, 0.0});
  FixedSource inner;
  auto make = [&](BackgroundOptions o) {
    BackgroundStateSource s(inner, c, [&]() -> const model::Model<float>& { return m; }, stream,
                            o);
  };
  BackgroundOptions o;
  o.chains = 1;
  o.tokens_per_step = 12;  // not a multiple of the segment (8)
  o.max_tokens = 64;
  EXPECT_THROW(make(o), Error);
  o.tokens_per_step = 8;
  o.max_tokens = 8;  // below two steps
  EXPECT_THROW(make(o), Error);
  o.max_tokens = 64;
  o.share = 0;
  EXPECT_THROW(make(o), Error);
  o.share = 0.1;  // valid, but of a batch of 4 rows it is no row at all
  {
    BackgroundStateSource s(inner, c, [&]() -> const model::Model<float>& { return m; }, stream,
                            o);
    Batch b;
    EXPECT_THROW(s.next(4, 16, b), Error);
  }
  model::ModelConfig local = c;
  local.use_memory = false;
  o.share = 1;
  EXPECT_THROW(BackgroundStateSource(inner, local, [&]() -> const model::Model<float>& { return m; },
                                     stream, o),
               Error);
}

// The trainer's gradient starts every row from Batch::initial_state: its loss equals
// sequence_loss from that state, and differs from the loss from the empty memory.
TEST(BackgroundState, TrainerStartsFromTheBatchsInitialState) {
  const model::ModelConfig c = tiny_config();
  model::Model<float> m = model::init_model(c, {7, 0.3, 0.0});
  FixedSource data;
  BackgroundOptions o;
  o.chains = 2;
  o.tokens_per_step = 32;
  o.max_tokens = 1024;
  o.share = 1.0;
  FullModelTrainable trainable(m, "");
  BackgroundStateSource src(
      data, c, [&]() -> const model::Model<float>& { return trainable.forward_model(); }, stream,
      o);
  TrainOptions to;
  to.out = "";
  to.steps = 1;
  to.batch = 2;
  to.seq_len = 24;
  to.grad_accum = 2;  // each micro-batch takes its own row of the initial state
  Trainer trainer(trainable, model_param_groups(m.layout, 1e-3, 1e-2, 0.0), src, {}, to);
  Batch b;
  src.next(2, 24, b);
  std::vector<float> grad(size_t(trainable.size()));
  const StepGradient sg = trainer.compute_gradient(b, grad.data());

  model::ForwardContext<float> ctx(c);
  model::SequenceWorkspace<float> ws;
  model::MemoryState<float> start = b.initial_state;
  const model::LossResult from_state =
      model::sequence_loss<float>(m, ctx, b.tokens.data(), 2, 24, nullptr, {}, ws, &start);
  const model::LossResult from_empty =
      model::sequence_loss<float>(m, ctx, b.tokens.data(), 2, 24, nullptr, {}, ws, nullptr);
  EXPECT_NEAR(sg.loss_sum, from_state.loss_sum, 1e-4 * from_state.loss_sum);
  EXPECT_GT(std::fabs(from_state.loss_sum - from_empty.loss_sum), 1e-3);

  Batch wrong = b;
  wrong.initial_state = model::MemoryState<float>::zeros(c, 3);
  EXPECT_THROW(trainer.compute_gradient(wrong, grad.data()), Error);
}
