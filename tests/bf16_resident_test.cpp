// Inference with the weights held in bf16 (issue #27): a model whose linear weights live only
// as packed bf16 copies (make_bf16_resident, load_model_bf16_resident) computes what the
// float32 model computes under Precision::BF16 with its weights packed, bit for bit, in about
// half the memory; everything that needs the float32 weights refuses it by name.
#include <gtest/gtest.h>

#include <filesystem>

#include "infer/session.hpp"
#include "model/bptt.hpp"
#include "model/lora.hpp"
#include "model/packed_weights.hpp"
#include "util/gradcheck.hpp"

using namespace infini;
using namespace infini::model;
using namespace infini::testing;

namespace {

// Dense (GQA, biases, untied or tied) and sparse (Qwen2-MoE: experts, shared expert, router).
ModelConfig config_for(const std::string& kind) {
  ModelConfig c;
  c.vocab_size = 70;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.attention_bias = true;
  c.tie_word_embeddings = kind == "tied";
  c.segment_length = 8;
  c.memory_update = MemoryUpdate::Delta;
  if (kind == "moe") {
    c.model_type = "qwen2_moe";
    c.num_experts = 4;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 16;
    c.shared_expert_intermediate_size = 24;
    c.mlp_only_layers = {0};
  }
  return c;
}

Model<float> random_float_model(const ModelConfig& c, uint64_t seed) {
  Model<float> m = init_model(c, {seed, 0.3, 0.5});
  const auto noise = random_vec(size_t(m.layout.total), seed + 1, 0.2);
  for (const auto& p : m.layout.params)
    if (p.kind != ParamKind::Matrix && p.kind != ParamKind::Embedding)
      for (int64_t i = 0; i < p.numel; ++i)
        m.weights[size_t(p.offset + i)] += float(noise[size_t(p.offset + i)]);
  return m;
}

// Logits and final memory of `segments` whole segments of `batch` sequences.
std::pair<std::vector<float>, std::vector<float>> run_segments(const Model<float>& m,
                                                               Precision precision,
                                                               bool reference,
                                                               const PackedWeights* packed,
                                                               int64_t batch, int64_t segments) {
  const ModelConfig& c = m.config;
  ForwardContext<float> ctx(c);
  ctx.precision = precision;
  ctx.reference = reference;
  ctx.threads = reference ? 0 : 2;
  MemoryState<float> st = MemoryState<float>::zeros(c, batch);
  SegmentActs<float> acts;
  std::vector<float> logits;
  const auto tokens = random_tokens(batch * c.segment_length, c.vocab_size, 5);
  for (int64_t s = 0; s < segments; ++s) {
    forward_chunk(m, ctx, tokens.data(), batch, c.segment_length, st, acts,
                  (KVCache<float>*)nullptr, true,
                  packed);
    logits.insert(logits.end(), acts.logits.begin(), acts.logits.end());
  }
  return {logits, st.M};
}

class Resident : public ::testing::TestWithParam<std::string> {};

}  // namespace

// with_last is a permutation of the storage only: a model laid out with its matrices last
// computes the same bits as the plain one (every offset the forward reads was moved with its
// tensor), on every CPU.
TEST_P(Resident, LayoutWithMatricesLastComputesTheSameBits) {
  const ModelConfig c = config_for(GetParam());
  const Model<float> m = random_float_model(c, 3);
  std::vector<int64_t> apart;
  int64_t matrix_values = 0;
  for (const ParamInfo& p : m.layout.params)
    if (p.kind == ParamKind::Matrix) apart.push_back(p.offset), matrix_values += p.numel;
  Model<float> moved;
  moved.config = c;
  int64_t kept = -1;
  moved.layout = m.layout.with_last(apart, kept);
  EXPECT_EQ(kept, m.layout.total - matrix_values);
  EXPECT_EQ(moved.layout.total, m.layout.total);
  moved.weights.assign(size_t(m.layout.total), 0.0f);
  ASSERT_EQ(moved.layout.params.size(), m.layout.params.size());
  for (size_t i = 0; i < m.layout.params.size(); ++i) {
    const ParamInfo &a = m.layout.params[i], &b = moved.layout.params[i];
    ASSERT_EQ(a.name, b.name);
    EXPECT_EQ(b.offset >= kept, a.kind == ParamKind::Matrix) << a.name;
    std::copy_n(m.weights.data() + a.offset, a.numel, moved.weights.data() + b.offset);
  }
  EXPECT_NE(moved.layout.layers[0].wq, m.layout.layers[0].wq);
  for (bool reference : {false, true}) {
    const auto want = run_segments(m, Precision::FP32, reference, nullptr, 2, 2);
    const auto got = run_segments(moved, Precision::FP32, reference, nullptr, 2, 2);
    EXPECT_EQ(got.first, want.first) << (reference ? "reference" : "fast");
    EXPECT_EQ(got.second, want.second);
  }
}

// The bf16-resident model against the float32 model under Precision::BF16 with its weights
// packed: the same kernel on the same packed bf16 values, so the same bits; in memory, the
// linear weights (the experts' too) take 2 bytes each plus the kernel's padding.
TEST_P(Resident, Bf16ResidentModelMatchesThePackedFloatModel) {
  if (!bf16_resident_available()) GTEST_SKIP() << "no AVX512-BF16 here: resident weights need it";
  const ModelConfig c = config_for(GetParam());
  const Model<float> m = random_float_model(c, 11);
  const Model<float> r = make_bf16_resident(m);
  ASSERT_FALSE(r.floats_complete());
  PackedWeights packed;
  pack_weights(m, false, int64_t(1) << 30, packed, Precision::BF16);
  ASSERT_FALSE(packed.empty());
  for (bool reference : {false, true}) {
    const auto want = run_segments(m, Precision::BF16, reference, &packed, 2, 3);
    const auto got = run_segments(r, Precision::BF16, reference, nullptr, 2, 3);
    EXPECT_EQ(got.first, want.first) << (reference ? "reference" : "fast");
    EXPECT_EQ(got.second, want.second);
  }
  // Its memory: the float values it kept plus its packed copies, exactly.
  int64_t linear_values = 0, packed_bytes = 0;
  for (const LinearWeight& w : linear_weights(c, m.layout)) {
    if (w.offset != m.layout.embed) linear_values += w.out * w.in;
    packed_bytes += ((w.out + 31) / 32 * 32) * ((w.in + 1) / 2 * 2) * 2;
  }
  EXPECT_EQ(int64_t(r.weights.size()), m.layout.total - linear_values);
  int64_t held = 0;
  for (const auto& [offset, e] : r.bf16_weights->by_offset) held += int64_t(e.forward_bf16.bytes());
  EXPECT_EQ(held, packed_bytes);
}

// An embedding whose values are all bf16 values (as a BF16 checkpoint's are) is held as bf16
// rows: the same bits as before, in half its memory, also when it is the tied LM head's source
// and when loaded from disk; one value that bf16 cannot hold keeps it in float32.
TEST_P(Resident, AnExactlyBf16EmbeddingIsHeldInBf16) {
  if (!bf16_resident_available()) GTEST_SKIP() << "no AVX512-BF16 here";
  const ModelConfig c = config_for(GetParam());
  Model<float> m = random_float_model(c, 31);
  const int64_t E = c.vocab_size * c.hidden_size;
  float* emb = m.at(m.layout.embed);
  for (int64_t i = 0; i < E; ++i) emb[i] = ops::round_bf16(emb[i]);
  int64_t linear_values = 0;
  for (const LinearWeight& w : linear_weights(c, m.layout))
    if (w.offset != m.layout.embed) linear_values += w.out * w.in;

  const Model<float> r = make_bf16_resident(m);
  ASSERT_EQ(int64_t(r.bf16_weights->embedding.size()), E);
  EXPECT_EQ(int64_t(r.weights.size()), m.layout.total - linear_values - E);
  EXPECT_EQ(r.bf16_weights->embedding[7], ops::to_bf16(emb[7]));
  PackedWeights packed;
  pack_weights(m, false, int64_t(1) << 30, packed, Precision::BF16);
  for (bool reference : {false, true}) {
    const auto want = run_segments(m, Precision::BF16, reference, &packed, 2, 2);
    const auto got = run_segments(r, Precision::BF16, reference, nullptr, 2, 2);
    EXPECT_EQ(got.first, want.first) << (reference ? "reference" : "fast");
    EXPECT_EQ(got.second, want.second);
  }

  const auto dir = std::filesystem::temp_directory_path() / ("infini_resident_emb_" + GetParam());
  save_model(m, dir.string());
  const Model<float> loaded = load_model_bf16_resident(dir.string());
  EXPECT_EQ(loaded.bf16_weights->embedding, r.bf16_weights->embedding);
  EXPECT_EQ(loaded.weights, r.weights);
  std::filesystem::remove_all(dir);

  emb[3] = 1.0f + 1.0f / 1024;  // 11 significant bits: not a bf16 value
  const Model<float> f = make_bf16_resident(m);
  EXPECT_TRUE(f.bf16_weights->embedding.empty());
  EXPECT_EQ(int64_t(f.weights.size()), m.layout.total - linear_values);
  EXPECT_EQ(f.at(f.layout.embed)[3], emb[3]);
  pack_weights(m, false, int64_t(1) << 30, packed, Precision::BF16);
  const auto want = run_segments(m, Precision::BF16, false, &packed, 2, 1);
  EXPECT_EQ(run_segments(f, Precision::BF16, false, nullptr, 2, 1).first, want.first);
}

// Streaming generation (prefill chunks through the cache, single-token decode on the plain
// path) gives the same logits from the resident model as from the packed float model, and the
// two sessions' weight hashes differ (a state is tied to the weights it was computed with).
TEST_P(Resident, GenerationSessionsAgree) {
  if (!bf16_resident_available()) GTEST_SKIP() << "no AVX512-BF16 here";
  const ModelConfig c = config_for(GetParam());
  const Model<float> m = random_float_model(c, 17);
  const Model<float> r = make_bf16_resident(m);
  infer::SessionOptions so;
  so.precision = Precision::BF16;
  so.prefill_chunk = 3;
  infer::Session a(m, so), b(r, so);
  const auto prompt = random_tokens(13, c.vocab_size, 19);
  a.feed(prompt);
  b.feed(prompt);
  for (int step = 0; step < 6; ++step) {
    const auto la = a.logits(), lb = b.logits();
    ASSERT_EQ(std::vector<float>(la.begin(), la.end()), std::vector<float>(lb.begin(), lb.end()))
        << "step " << step;
    const int32_t next = int32_t(std::max_element(la.begin(), la.end()) - la.begin());
    a.feed(next);
    b.feed(next);
  }
  EXPECT_NE(a.weights_hash(), b.weights_hash());
}

// Loading tensor by tensor from the model directory gives the model make_bf16_resident makes
// from load_model's (the same packed bits, the same float values kept).
TEST_P(Resident, LoadingFromDiskEqualsConvertingInMemory) {
  if (!bf16_resident_available()) GTEST_SKIP() << "no AVX512-BF16 here";
  const ModelConfig c = config_for(GetParam());
  const auto dir = std::filesystem::temp_directory_path() / ("infini_resident_" + GetParam());
  save_model(random_float_model(c, 23), dir.string());
  const Model<float> loaded = load_model_bf16_resident(dir.string());
  const Model<float> made = make_bf16_resident(load_model(dir.string()));
  EXPECT_EQ(loaded.weights, made.weights);
  ASSERT_EQ(loaded.bf16_weights->by_offset.size(), made.bf16_weights->by_offset.size());
  for (const auto& [offset, e] : made.bf16_weights->by_offset) {
    const ops::PackedBf16& x = *loaded.bf16_weights->forward_bf16(offset);
    ASSERT_EQ(x.bytes(), e.forward_bf16.bytes());
    EXPECT_EQ(0, std::memcmp(x.data.get(), e.forward_bf16.data.get(), x.bytes()));
  }
  // load_inference_model picks it under bf16 only.
  EXPECT_FALSE(load_inference_model(dir.string(), Precision::BF16).floats_complete());
  EXPECT_TRUE(load_inference_model(dir.string(), Precision::FP32).floats_complete());
  std::filesystem::remove_all(dir);
}

// What needs the float32 weights says so instead of reading weights that are not there.
TEST_P(Resident, WhatNeedsFloatWeightsRefusesIt) {
  if (!bf16_resident_available()) GTEST_SKIP() << "no AVX512-BF16 here";
  const ModelConfig c = config_for(GetParam());
  const Model<float> r = make_bf16_resident(random_float_model(c, 29));
  auto expect_refused = [](const std::function<void()>& f, const std::string& what) {
    try {
      f();
      ADD_FAILURE() << what << " ran";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
    }
  };
  expect_refused([&] { run_segments(r, Precision::FP32, false, nullptr, 1, 1); }, "fp32 forward");
  expect_refused([&] { save_model(r, "/nonexistent/never"); }, "save_model");
  expect_refused([&] { cast_model<double>(r); }, "cast_model");
  expect_refused([&] { make_bf16_resident(r); }, "make_bf16_resident twice");
  expect_refused(
      [&] {
        ForwardContext<float> ctx(c);
        ctx.precision = Precision::BF16;
        SequenceWorkspace<float> ws;
        std::vector<float> g(size_t(r.layout.total), 0.0f);
        const auto tokens = random_tokens(c.segment_length, c.vocab_size, 1);
        sequence_loss<float>(r, ctx, tokens.data(), 1, c.segment_length, g.data(), {}, ws);
      },
      "training");
  PackedWeights p;
  pack_weights(r, false, int64_t(1) << 30, p, Precision::BF16);
  EXPECT_TRUE(p.empty());
}

INSTANTIATE_TEST_SUITE_P(Models, Resident, ::testing::Values("dense", "tied", "moe"));
