// LoRA: adapter gradients against finite differences (double), the zero start, the PEFT file
// round trip, merging (library and `infini lora merge`) against the adapted model's logits,
// and a fine-tuning step that leaves the base weights frozen.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/bptt.hpp"
#include "model/lora.hpp"
#include "tasks/lora_trainable.hpp"
#include "util/cli.hpp"
#include "util/gradcheck.hpp"

using namespace infini;
using namespace infini::model;
using namespace infini::testing;
namespace fs = std::filesystem;

namespace {

ModelConfig small_config(bool use_memory, bool gqa) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = gqa ? 4 : 2;
  c.num_kv_heads = 2;
  c.head_dim = gqa ? 2 : 4;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100.0;
  c.segment_length = 3;
  c.memory_update = MemoryUpdate::Delta;
  c.use_memory = use_memory;
  return c;
}

std::vector<int32_t> tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(g() % uint64_t(vocab));
  return t;
}

// An adapter with B != 0 (a fresh one has B = 0, which would hide half of the chain rule).
LoraAdapter<float> random_adapter(const Model<float>& base, int64_t rank, uint64_t seed) {
  LoraAdapter<float> a = lora_init(base, {rank, 2.0 * double(rank) + 1}, seed);
  std::mt19937_64 g(seed + 1);
  std::normal_distribution<double> n(0, 0.4);
  for (auto& v : a.values) v += float(n(g));
  return a;
}

std::vector<float> logits_of(const Model<float>& m, const std::vector<int32_t>& t) {
  ForwardContext<float> ctx(m.config);
  MemoryState<float> st = MemoryState<float>::zeros(m.config, 1);
  SegmentActs<float> acts;
  std::vector<float> out;
  const int64_t N = m.config.segment_length;
  for (int64_t s = 0; s < int64_t(t.size()); s += N) {
    forward_chunk<float>(m, ctx, t.data() + s, 1, std::min<int64_t>(N, int64_t(t.size()) - s), st, acts);
    out.insert(out.end(), acts.logits.begin(), acts.logits.end());
  }
  return out;
}

}  // namespace

class LoraGrad : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(LoraGrad, AdapterGradientMatchesFiniteDifferences) {
  const auto [use_memory, gqa] = GetParam();
  const ModelConfig cfg = small_config(use_memory, gqa);
  Model<float> basef = init_model(cfg, {3, 0.5, 0.3});
  const LoraAdapter<float> af = random_adapter(basef, 2, 7);
  const Model<double> base = cast_model<double>(basef);
  const LoraLayout& L = af.layout;
  std::vector<double> values(af.values.begin(), af.values.end());
  const int64_t T = 8, B = 2;
  const auto toks = tokens(B * T, cfg.vocab_size, 11);
  ForwardContext<double> ctx(cfg);
  SequenceWorkspace<double> ws;
  Model<double> merged;
  auto loss = [&] {
    lora_apply(L, values.data(), base, merged);
    return sequence_loss<double>(merged, ctx, toks.data(), B, T, nullptr, {}, ws).mean();
  };
  lora_apply(L, values.data(), base, merged);
  std::vector<double> mg(size_t(merged.layout.total), 0.0), g(size_t(L.total));
  sequence_loss<double>(merged, ctx, toks.data(), B, T, mg.data(), {}, ws);
  lora_map_gradient(L, values.data(), mg.data(), g.data());
  const std::vector<double> num = numeric_grad(loss, values, 1e-5);
  EXPECT_LT(rel_err(g, num, 1e-6), 1e-6);
  // Every part of the buffer got a gradient: A, B and (with memory) the gates.
  double a_norm = 0, b_norm = 0, gate_norm = 0;
  for (const auto& s : L.slots) {
    for (int64_t i = 0; i < L.config.rank * s.in; ++i) a_norm += std::abs(g[size_t(s.a + i)]);
    for (int64_t i = 0; i < s.out * L.config.rank; ++i) b_norm += std::abs(g[size_t(s.b + i)]);
  }
  for (int64_t i = L.gate_begin; i < L.total; ++i) gate_norm += std::abs(g[size_t(i)]);
  EXPECT_GT(a_norm, 1e-6);
  EXPECT_GT(b_norm, 1e-6);
  if (use_memory) EXPECT_GT(gate_norm, 1e-8);
  else EXPECT_EQ(L.total, L.gate_begin);
}

INSTANTIATE_TEST_SUITE_P(Configs, LoraGrad,
                         ::testing::Values(std::make_tuple(true, false), std::make_tuple(true, true),
                                           std::make_tuple(false, false)));

TEST(Lora, FreshAdapterLeavesTheModelUnchanged) {
  const Model<float> base = init_model(small_config(true, false), {1, 0.5, 0.7});
  const LoraAdapter<float> a = lora_init(base, {4, 8}, 3);
  EXPECT_EQ(lora_merge(base, a).weights, base.weights);
  // A is random (PEFT's kaiming-uniform bound 1/sqrt(in)), B is zero.
  const LoraSlot& s = a.layout.slots[0];
  double amax = 0, bmax = 0;
  for (int64_t i = 0; i < 4 * s.in; ++i) amax = std::max(amax, double(std::abs(a.values[size_t(s.a + i)])));
  for (int64_t i = 0; i < s.out * 4; ++i) bmax = std::max(bmax, double(std::abs(a.values[size_t(s.b + i)])));
  EXPECT_GT(amax, 0.0);
  EXPECT_LE(amax, 1.0 / std::sqrt(double(s.in)));
  EXPECT_EQ(bmax, 0.0);
}

TEST(Lora, MergeRoundTripGivesTheAdaptedLogits) {
  const ModelConfig cfg = small_config(true, true);
  const Model<float> base = init_model(cfg, {5, 0.5, 0.2});
  const LoraAdapter<float> a = random_adapter(base, 3, 9);
  Model<float> adapted;
  lora_apply(a.layout, a.values.data(), base, adapted);
  const auto toks = tokens(10, cfg.vocab_size, 4);
  const std::vector<float> want = logits_of(adapted, toks);
  ASSERT_NE(want, logits_of(base, toks));  // the adapter changes the model

  const std::string dir = testutil::temp_dir("lora_test_merge").string();
  const std::string base_dir = dir + "/base", ad_dir = dir + "/adapter", out_dir = dir + "/merged";
  save_model(base, base_dir);
  save_lora(a, ad_dir, base_dir);
  // PEFT names and shapes.
  auto f = io::SafetensorsFile::open(ad_dir + "/adapter_model.safetensors");
  const io::TensorInfo* qa = f->find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
  const io::TensorInfo* ob = f->find("base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight");
  ASSERT_TRUE(qa && ob);
  EXPECT_EQ(qa->shape, (std::vector<int64_t>{3, cfg.hidden_size}));
  EXPECT_EQ(ob->shape, (std::vector<int64_t>{cfg.hidden_size, 3}));
  EXPECT_TRUE(f->find("base_model.model.model.layers.1.self_attn.beta"));

  // Library merge after a file round trip.
  const Model<float> base2 = load_model(base_dir);
  const LoraAdapter<float> a2 = load_lora(ad_dir, base2);
  EXPECT_EQ(a2.values, a.values);
  EXPECT_EQ(logits_of(lora_merge(base2, a2), toks), want);

  // The command line.
  const std::string args =
      "lora merge --model " + base_dir + " --adapter " + ad_dir + " --out " + out_dir;
  const testutil::CliResult r = testutil::run_infini(args);
  ASSERT_EQ(r.code, 0) << args << "\n" << r.err;
  EXPECT_EQ(logits_of(load_model(out_dir), toks), want);
  fs::remove_all(dir);
}

TEST(Lora, LoadRejectsAMismatchedAdapter) {
  const Model<float> base = init_model(small_config(true, false), {1, 0.5, 0});
  const std::string dir = testutil::temp_dir("lora_test_bad").string();
  save_lora(lora_init(base, {2, 4}, 1), dir, "x");
  ModelConfig wider = small_config(true, false);
  wider.hidden_size = 12;
  wider.head_dim = 6;
  const Model<float> other = init_model(wider, {1, 0.5, 0});
  try {
    load_lora(dir, other);
    FAIL() << "a mismatched adapter loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_A.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_lora(dir + "/missing", base), Error);
  fs::remove_all(dir);
}

TEST(Lora, TrainableUpdatesOnlyAdaptersAndGates) {
  const ModelConfig cfg = small_config(true, false);
  const Model<float> base = init_model(cfg, {2, 0.5, 0});
  tasks::LoraTrainable lt(base, {2, 4}, 5, "", "base");
  const auto groups = lt.param_groups(1e-2, 1e-1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[1].name, "gates");
  train::AdamW opt(lt.size(), groups);
  const auto toks = tokens(2 * 9, cfg.vocab_size, 8);
  ForwardContext<float> ctx(cfg);
  SequenceWorkspace<float> ws;
  std::vector<float> mg(size_t(base.layout.total)), g(size_t(lt.size()));
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    std::fill(mg.begin(), mg.end(), 0.0f);
    const double l = sequence_loss<float>(lt.forward_model(), ctx, toks.data(), 2, 9, mg.data(), {}, ws).mean();
    if (step == 0) first = l;
    last = l;
    lt.map_gradient(mg.data(), g.data());
    opt.step(lt.params(), g.data(), 1.0);
  }
  EXPECT_LT(last, first - 0.05);
  const Model<float>& m = lt.forward_model();
  // Only q/k/v/o and beta may differ from the base.
  for (const auto& p : base.layout.params) {
    const bool adapted = p.name.find("_proj.weight") != std::string::npos &&
                         p.name.find("mlp") == std::string::npos;
    const bool gate = p.kind == ParamKind::Gate;
    bool same = true;
    for (int64_t i = 0; i < p.numel; ++i) same = same && m.weights[size_t(p.offset + i)] == base.weights[size_t(p.offset + i)];
    if (adapted || gate) EXPECT_FALSE(same) << p.name;
    else EXPECT_TRUE(same) << p.name;
  }
  // save() writes a loadable merged model plus the adapter; restore() reads the adapter back.
  const std::string dir = testutil::temp_dir("lora_test_trainable").string();
  lt.save(dir);
  EXPECT_EQ(load_model(dir).weights, m.weights);
  tasks::LoraTrainable fresh(base, {2, 4}, 99, "", "base");
  fresh.restore(dir);
  EXPECT_EQ(fresh.forward_model().weights, m.weights);
  fs::remove_all(dir);
}
