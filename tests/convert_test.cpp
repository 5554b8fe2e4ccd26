// Hugging Face checkpoints in and out: synthetic Llama/Qwen2 checkpoints (sharded, BF16,
// biases, GQA, tied) are converted, and with the gates closed the converted model equals the
// original model's segment-local attention.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/bptt.hpp"
#include "model/convert.hpp"
#include "util/cli.hpp"
#include "util/hf_checkpoint.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;
using namespace infini;
using namespace infini::model;
namespace fs = std::filesystem;

namespace {

struct HfCase {
  const char* name;
  const char* model_type;
  bool tied, bf16, sharded;
  int64_t kv_heads;
};

// A plain checkpoint of this case (vocab 300, hidden 32, 2 layers, 4 query heads), see
// tests/util/hf_checkpoint.hpp.
Model<float> write_hf_checkpoint(const HfCase& c, const fs::path& dir) {
  testutil::HfCheckpoint h;
  h.model_type = c.model_type;
  h.tied = c.tied;
  h.bf16 = c.bf16;
  h.sharded = c.sharded;
  h.num_kv_heads = c.kv_heads;
  return testutil::write_hf_checkpoint(h, dir);
}

std::vector<float> logits_of(const Model<float>& m, const std::vector<int32_t>& ids) {
  ForwardContext<float> ctx(m.config);
  MemoryState<float> st = MemoryState<float>::zeros(m.config, 1);
  SegmentActs<float> acts;
  std::vector<float> out;
  const int64_t N = m.config.segment_length, T = int64_t(ids.size());
  for (int64_t s = 0; s * N < T; ++s) {
    forward_chunk(m, ctx, ids.data() + s * N, 1, std::min(N, T - s * N), st, acts);
    out.insert(out.end(), acts.logits.begin(), acts.logits.end());
  }
  return out;
}

class Convert : public ::testing::TestWithParam<HfCase> {};

}  // namespace

TEST_P(Convert, ClosedGatesGiveTheOriginalSegmentLocalModel) {
  const HfCase c = GetParam();
  const fs::path d = testutil::temp_dir(std::string("convert_") + c.name);
  Model<float> plain = write_hf_checkpoint(c, d / "hf");
  ConvertOptions co;
  co.segment_length = 16;
  co.memory_update = MemoryUpdate::Delta;
  co.gate_init = -60;
  convert_hf_checkpoint((d / "hf").string(), (d / "infini").string(), co);
  EXPECT_TRUE(fs::exists(d / "infini/tokenizer.json"));
  const Model<float> conv = load_model((d / "infini").string());
  EXPECT_TRUE(conv.config.use_memory);
  EXPECT_EQ(conv.config.segment_length, 16);
  EXPECT_EQ(conv.config.memory_update, MemoryUpdate::Delta);
  EXPECT_EQ(conv.config.tie_word_embeddings, c.tied);

  plain.config.segment_length = 16;  // the original with segment-local attention
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 37 + 11) % 300);
  const auto a = logits_of(plain, ids), b = logits_of(conv, ids);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5) << i;

  // Open gates: the memory now changes the outputs after the first segment.
  const fs::path open_dir = d / "open";
  co.gate_init = 0;
  convert_hf_checkpoint((d / "hf").string(), open_dir.string(), co);
  const auto o = logits_of(load_model(open_dir.string()), ids);
  double diff = 0;
  for (size_t i = 16 * 300; i < o.size(); ++i) diff = nan_max(diff, double(std::abs(o[i] - a[i])));
  EXPECT_GT(diff, 1e-3);

  // Export and load back: identical model.
  export_hf_checkpoint(open_dir.string(), (d / "export").string(), false);
  const auto e = logits_of(load_model((d / "export").string()), ids);
  EXPECT_EQ(e, o);
  fs::remove_all(d);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, Convert,
                         ::testing::Values(HfCase{"llama_f32", "llama", false, false, false, 4},
                                           HfCase{"llama_bf16_sharded_gqa", "llama", true, true, true, 2},
                                           HfCase{"qwen2_bias_mqa", "qwen2", true, false, true, 1}),
                         [](const auto& i) { return std::string(i.param.name); });

TEST(ConvertErrors, NameTheProblem) {
  const fs::path d = testutil::temp_dir("convert_errors");
  HfCase c{"x", "llama", false, false, false, 4};
  write_hf_checkpoint(c, d / "hf");
  auto expect_error = [&](const std::string& needle) {
    try {
      convert_hf_checkpoint((d / "hf").string(), (d / "out").string(), {});
      FAIL() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto cfg = nlohmann::json::parse(std::ifstream(d / "hf/config.json"));
  cfg["model_type"] = "mistral_moe";
  std::ofstream(d / "hf/config.json") << cfg.dump();
  expect_error("mistral_moe");
  cfg["model_type"] = "llama";
  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  std::ofstream(d / "hf/config.json") << cfg.dump();
  expect_error("rope_scaling");
  cfg.erase("rope_scaling");
  std::ofstream(d / "hf/config.json") << cfg.dump();
  // A missing projection is named.
  auto f = io::SafetensorsFile::open((d / "hf/model.safetensors").string());
  std::vector<io::RawTensor> keep;
  for (const auto& t : f->tensors())
    if (t.name != "model.layers.1.mlp.up_proj.weight")
      keep.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
  f.reset();
  io::write_safetensors_raw((d / "hf/model.safetensors").string(), keep);
  expect_error("model.layers.1.mlp.up_proj.weight");
  fs::remove_all(d);
}
