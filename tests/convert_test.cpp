// Hugging Face checkpoints in and out: synthetic Llama/Qwen2 checkpoints (sharded, BF16,
// biases, GQA, tied) are converted, and with the gates closed the converted model equals the
// original model's segment-local attention. Qwen2-MoE checkpoints convert, export and convert
// again losslessly, tensor by tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/bptt.hpp"
#include "model/convert.hpp"
#include "util/cli.hpp"
#include "util/hf_checkpoint.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;
using nlohmann::json;
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

// ---- qwen2_moe (SPEC §7): Hugging Face Qwen2MoeForCausalLM checkpoints in and out.

namespace {

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A synthetic Qwen1.5-MoE-style checkpoint: sharded BF16, 3 layers with layer 1 dense
// (mlp_only_layers), 4 experts of width 24, top 2, a shared expert of width 40, GQA.
testutil::HfCheckpoint moe_checkpoint() {
  testutil::HfCheckpoint h;
  h.model_type = "qwen2_moe";
  h.num_layers = 3;
  h.num_kv_heads = 2;
  h.bf16 = true;
  h.sharded = true;
  h.shards = 3;
  h.mlp_only_layers = {1};
  return h;
}

// The tensors of a safetensors file or sharded directory: name -> (dtype, shape, bytes).
std::map<std::string, std::tuple<io::DType, std::vector<int64_t>, std::string>> tensors_of(
    const fs::path& dir) {
  std::map<std::string, std::tuple<io::DType, std::vector<int64_t>, std::string>> out;
  const io::WeightStore s = io::WeightStore::open_dir(dir.string());
  for (const auto& n : s.names()) {
    const io::TensorInfo& t = s.get(n);
    out[n] = {t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.nbytes)};
  }
  return out;
}

}  // namespace

TEST(ConvertMoe, ConvertExportConvertIsLossless) {
  const fs::path d = testutil::temp_dir("convert_moe");
  const Model<float> plain = testutil::write_hf_checkpoint(moe_checkpoint(), d / "hf");
  ASSERT_TRUE(fs::exists(d / "hf/model-00003-of-00003.safetensors"));
  ConvertOptions co;
  co.segment_length = 16;
  co.gate_init = -30;
  convert_hf_checkpoint((d / "hf").string(), (d / "c1").string(), co);
  EXPECT_TRUE(fs::exists(d / "c1/tokenizer.json"));

  const Model<float> m = load_model((d / "c1").string());
  EXPECT_TRUE(m.config.is_moe());
  EXPECT_TRUE(m.config.attention_bias);
  EXPECT_EQ(m.config.num_experts, 4);
  EXPECT_EQ(m.config.num_experts_per_tok, 2);
  EXPECT_EQ(m.config.moe_intermediate_size, 24);
  EXPECT_EQ(m.config.shared_expert_intermediate_size, 40);
  EXPECT_EQ(m.config.mlp_only_layers, std::vector<int64_t>{1});
  EXPECT_TRUE(m.config.use_memory);
  EXPECT_TRUE(m.layout.layers[0].sparse);
  EXPECT_FALSE(m.layout.layers[1].sparse);
  EXPECT_TRUE(m.layout.layers[2].sparse);
  // Every tensor of the checkpoint, exactly (BF16 -> F32 is exact); the betas at --gate-init.
  for (const auto& p : m.layout.params) {
    const ParamInfo* q = plain.layout.find(p.name);
    for (int64_t i = 0; i < p.numel; ++i) {
      const float want = q ? plain.weights[size_t(q->offset + i)] : -30.0f;
      ASSERT_EQ(m.weights[size_t(p.offset + i)], want) << p.name << " " << i;
    }
    EXPECT_EQ(q == nullptr, p.kind == ParamKind::Gate) << p.name;
  }

  // Export in BF16: Qwen2MoeForCausalLM, and every source tensor byte for byte.
  export_hf_checkpoint((d / "c1").string(), (d / "hf2").string(), true);
  const json ej = json::parse(std::ifstream(d / "hf2/config.json"));
  EXPECT_EQ(ej["architectures"], json({"Qwen2MoeForCausalLM"}));
  EXPECT_EQ(ej["model_type"], "qwen2_moe");
  EXPECT_EQ(ej["num_experts"], 4);
  EXPECT_EQ(ej["mlp_only_layers"], json({1}));
  EXPECT_EQ(ej["torch_dtype"], "bfloat16");
  EXPECT_TRUE(fs::exists(d / "hf2/tokenizer.json"));
  const auto src = tensors_of(d / "hf"), exported = tensors_of(d / "hf2");
  for (const auto& [name, t] : src) {
    auto it = exported.find(name);
    ASSERT_NE(it, exported.end()) << name;
    EXPECT_TRUE(it->second == t) << name;
  }
  EXPECT_EQ(exported.size(), src.size() + 3);  // + one beta per layer

  // Convert the export again: the same model directory, byte for byte.
  convert_hf_checkpoint((d / "hf2").string(), (d / "c2").string(), co);
  EXPECT_EQ(file_bytes(d / "c2/model.safetensors"), file_bytes(d / "c1/model.safetensors"));
  EXPECT_EQ(json::parse(std::ifstream(d / "c2/config.json")),
            json::parse(std::ifstream(d / "c1/config.json")));
  // And in BF16 (--bf16): the source's bytes again.
  co.bf16 = true;
  convert_hf_checkpoint((d / "hf2").string(), (d / "c3").string(), co);
  const auto c3 = tensors_of(d / "c3");
  for (const auto& [name, t] : src) EXPECT_TRUE(c3.at(name) == t) << name;
  fs::remove_all(d);
}

// The streaming writer gives the same file as loading the whole model and saving it, the way
// conversion worked before it streamed (dense outputs must stay byte-identical).
TEST(ConvertMoe, StreamingOutputEqualsLoadThenSave) {
  const fs::path d = testutil::temp_dir("convert_stream");
  testutil::HfCheckpoint dense;
  dense.bf16 = true;
  dense.sharded = true;
  for (const auto& h : {dense, moe_checkpoint()}) {
    fs::remove_all(d);
    testutil::write_hf_checkpoint(h, d / "hf");
    for (bool bf16 : {false, true}) {
      ConvertOptions co;
      co.gate_init = -2.5;
      co.bf16 = bf16;
      fs::remove_all(d / "out");
      convert_hf_checkpoint((d / "hf").string(), (d / "out").string(), co);
      const json cj = json::parse(std::ifstream(d / "out/config.json"));
      LoadOptions lo;
      lo.allow_missing_gates = true;
      lo.gate_init = -2.5;
      const Model<float> m =
          load_weights(config_from_json(cj, "out/config.json"), (d / "hf").string(), lo);
      if (!bf16) {
        save_tensors(m.layout, m.weights.data(), (d / "ref.safetensors").string());
      } else {
        std::vector<io::RawTensor> raw;
        for (const auto& p : m.layout.params) {
          io::RawTensor t{p.name, io::DType::BF16, p.shape, {}};
          for (int64_t i = 0; i < p.numel; ++i) {
            const uint16_t v = io::f32_to_bf16(m.weights[size_t(p.offset + i)]);
            t.bytes.push_back(uint8_t(v & 0xff));
            t.bytes.push_back(uint8_t(v >> 8));
          }
          raw.push_back(std::move(t));
        }
        io::write_safetensors_raw((d / "ref.safetensors").string(), raw, {{"format", "pt"}});
      }
      EXPECT_EQ(file_bytes(d / "out/model.safetensors"), file_bytes(d / "ref.safetensors"))
          << h.model_type << (bf16 ? " bf16" : " f32");
    }
  }
  fs::remove_all(d);
}

TEST(ConvertMoe, MissingExpertTensorIsNamed) {
  const fs::path d = testutil::temp_dir("convert_moe_missing");
  testutil::write_hf_checkpoint(moe_checkpoint(), d / "hf");
  const std::string gone = "model.layers.2.mlp.experts.3.down_proj.weight";
  // Out of its shard and out of the index, as a checkpoint that never had it.
  json idx = json::parse(std::ifstream(d / "hf/model.safetensors.index.json"));
  const std::string shard = idx["weight_map"][gone];
  idx["weight_map"].erase(gone);
  std::ofstream(d / "hf/model.safetensors.index.json") << idx.dump();
  {
    auto f = io::SafetensorsFile::open((d / "hf" / shard).string());
    std::vector<io::RawTensor> keep;
    for (const auto& t : f->tensors())
      if (t.name != gone)
        keep.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    f.reset();
    io::write_safetensors_raw((d / "hf" / shard).string(), keep);
  }
  try {
    convert_hf_checkpoint((d / "hf").string(), (d / "out").string(), {});
    FAIL() << "converted without " << gone;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor '" + gone + "' is missing"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(d / "out"));
  fs::remove_all(d);
}

TEST(ConvertMoe, BadMoeConfigsAreNamed) {
  const fs::path d = testutil::temp_dir("convert_moe_cfg");
  testutil::write_hf_checkpoint(moe_checkpoint(), d / "hf");
  const json good = json::parse(std::ifstream(d / "hf/config.json"));
  auto expect_error = [&](const std::function<void(json&)>& edit, const std::string& needle) {
    json j = good;
    edit(j);
    std::ofstream(d / "hf/config.json") << j.dump();
    try {
      convert_hf_checkpoint((d / "hf").string(), (d / "out").string(), {});
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(d / "out")) << needle;
  };
  expect_error([](json& j) { j["num_experts_per_tok"] = 6; },
               "'num_experts_per_tok' (6) must not exceed 'num_experts' (4)");
  expect_error([](json& j) { j["mlp_only_layers"] = {7}; }, "'mlp_only_layers' entry 7");
  expect_error([](json& j) { j["num_experts"] = 3; },
               "tensor 'model.layers.0.mlp.gate.weight' has shape [4, 32], expected [3, 32]");
  expect_error([](json& j) { j["mlp_only_layers"] = json::array(); }, "has a dense MLP in layer 1");
  expect_error([](json& j) { j["qkv_bias"] = false; }, "always has q/k/v biases");
  expect_error([](json& j) { j["use_sliding_window"] = true; }, "use_sliding_window");
  // Newer Hugging Face configs: the rotary base inside rope_parameters.
  json j = good;
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123456.0}};
  std::ofstream(d / "hf/config.json") << j.dump();
  convert_hf_checkpoint((d / "hf").string(), (d / "out").string(), {});
  EXPECT_EQ(load_config((d / "out/config.json").string()).rope_theta, 123456.0);
  fs::remove_all(d / "out");
  expect_error(
      [](json& j) { j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; },
      "rope_parameters.rope_type \"yarn\" is not supported");
  fs::remove_all(d);
}
