// The files side of qwen2_moe (SPEC §7): config keys and their errors, the sparse-layer rule,
// the parameter layout (names, shapes, kinds, offsets), init/save/load round trips and the
// optimizer's "routers" group. Dense layouts must stay as they were.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/config.hpp"
#include "model/model.hpp"
#include "model/params.hpp"
#include "train/optimizer.hpp"
#include "util/cli.hpp"

using namespace infini;
using namespace infini::model;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A small qwen2_moe config.json as Hugging Face's Qwen2MoeConfig writes it (no attention_bias).
json moe_json() {
  return {{"model_type", "qwen2_moe"},
          {"architectures", {"Qwen2MoeForCausalLM"}},
          {"vocab_size", 300},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1000000.0},
          {"tie_word_embeddings", false},
          {"use_sliding_window", false},
          {"sliding_window", 32768},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 24},
          {"shared_expert_intermediate_size", 40},
          {"norm_topk_prob", false},
          {"decoder_sparse_step", 1},
          {"mlp_only_layers", json::array()},
          {"router_aux_loss_coef", 0.001},
          {"output_router_logits", false},
          {"infini", {{"segment_length", 16}, {"memory_update", "linear"}, {"use_memory", true}}}};
}

ModelConfig parse(const json& j) { return config_from_json(j, "moe/config.json"); }

std::string error_of(const json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.decoder_sparse_step, b.decoder_sparse_step);
  EXPECT_EQ(a.mlp_only_layers, b.mlp_only_layers);
  EXPECT_EQ(a.router_aux_loss_coef, b.router_aux_loss_coef);
  EXPECT_EQ(a.output_router_logits, b.output_router_logits);
  EXPECT_EQ(a.segment_length, b.segment_length);
  EXPECT_EQ(a.memory_update, b.memory_update);
  EXPECT_EQ(a.use_memory, b.use_memory);
  EXPECT_EQ(a.extra, b.extra);
}

std::vector<int64_t> sparse_layers(const ModelConfig& c) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < c.num_layers; ++l)
    if (c.is_sparse_layer(l)) out.push_back(l);
  return out;
}

}  // namespace

TEST(MoeConfig, ParsesTheHuggingFaceKeys) {
  json j = moe_json();
  j["norm_topk_prob"] = true;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  j["router_aux_loss_coef"] = 0.02;
  j["output_router_logits"] = true;
  const ModelConfig c = parse(j);
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 24);
  EXPECT_EQ(c.shared_expert_intermediate_size, 40);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 2);
  EXPECT_EQ(c.mlp_only_layers, std::vector<int64_t>{3});
  EXPECT_EQ(c.router_aux_loss_coef, 0.02);
  EXPECT_TRUE(c.output_router_logits);
  // No attention_bias key in a Qwen2MoeConfig: q/k/v biases are always on.
  EXPECT_TRUE(c.attention_bias);
  // The MoE keys are interpreted, not carried as extras; the others are carried.
  for (const char* k : {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                        "shared_expert_intermediate_size", "norm_topk_prob",
                        "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef",
                        "output_router_logits"})
    EXPECT_FALSE(c.extra.contains(k)) << k;
  EXPECT_TRUE(c.extra.contains("use_sliding_window"));
  EXPECT_TRUE(c.extra.contains("architectures"));
}

TEST(MoeConfig, DefaultsAsSpecSection7) {
  json j = moe_json();
  for (const char* k : {"norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
                        "router_aux_loss_coef", "output_router_logits"})
    j.erase(k);
  const ModelConfig c = parse(j);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_FALSE(c.output_router_logits);
  j["mlp_only_layers"] = nullptr;  // null: empty
  EXPECT_TRUE(parse(j).mlp_only_layers.empty());
}

TEST(MoeConfig, RoundTripsThroughConfigToJson) {
  json j = moe_json();
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3, 0};
  j["norm_topk_prob"] = true;
  j["router_aux_loss_coef"] = 0.125;
  j["output_router_logits"] = true;
  const ModelConfig a = parse(j);
  const json out = config_to_json(a);
  // Written with Hugging Face's key names, so that export gives a Qwen2MoeConfig.
  EXPECT_EQ(out["model_type"], "qwen2_moe");
  EXPECT_EQ(out["num_experts"], 4);
  EXPECT_EQ(out["num_experts_per_tok"], 2);
  EXPECT_EQ(out["moe_intermediate_size"], 24);
  EXPECT_EQ(out["shared_expert_intermediate_size"], 40);
  EXPECT_EQ(out["decoder_sparse_step"], 2);
  EXPECT_EQ(out["mlp_only_layers"], json({3, 0}));
  EXPECT_EQ(out["norm_topk_prob"], true);
  EXPECT_EQ(out["router_aux_loss_coef"], 0.125);
  EXPECT_EQ(out["output_router_logits"], true);
  EXPECT_EQ(out["attention_bias"], true);
  EXPECT_EQ(out["use_sliding_window"], false);
  expect_same_config(parse(out), a);
}

TEST(MoeConfig, DenseModelsKeepMoeKeysAsUninterpretedExtras) {
  json j = moe_json();
  j["model_type"] = "qwen2";
  j["num_experts_per_tok"] = 9;  // would be an error for qwen2_moe
  const ModelConfig c = parse(j);
  EXPECT_FALSE(c.is_moe());
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_TRUE(c.extra.contains("num_experts"));
  EXPECT_EQ(config_to_json(c)["num_experts_per_tok"], 9);
  for (int64_t l = 0; l < c.num_layers; ++l) EXPECT_FALSE(c.is_sparse_layer(l));
  // A dense config that sets the MoE fields programmatically is still dense.
  ModelConfig d = c;
  d.num_experts = 4;
  d.decoder_sparse_step = 1;
  EXPECT_FALSE(d.is_sparse_layer(0));
}

TEST(MoeConfig, BadValuesNameTheFileAndTheKey) {
  struct Bad {
    const char* what;
    std::function<void(json&)> edit;
    const char* expect;
  };
  const std::vector<Bad> bad = {
      {"k > E", [](json& j) { j["num_experts_per_tok"] = 5; },
       "'num_experts_per_tok' (5) must not exceed 'num_experts' (4)"},
      {"E = 0", [](json& j) { j["num_experts"] = 0; }, "'num_experts' = 0 is out of range"},
      {"E missing", [](json& j) { j.erase("num_experts"); }, "missing required key 'num_experts'"},
      {"k = 0", [](json& j) { j["num_experts_per_tok"] = 0; },
       "'num_experts_per_tok' = 0 is out of range"},
      {"k missing", [](json& j) { j.erase("num_experts_per_tok"); },
       "missing required key 'num_experts_per_tok'"},
      {"Fm < 0", [](json& j) { j["moe_intermediate_size"] = -24; },
       "'moe_intermediate_size' = -24 is out of range"},
      {"Fm missing", [](json& j) { j.erase("moe_intermediate_size"); },
       "missing required key 'moe_intermediate_size'"},
      {"Fs = 0", [](json& j) { j["shared_expert_intermediate_size"] = 0; },
       "'shared_expert_intermediate_size' = 0 is out of range"},
      {"Fs missing", [](json& j) { j.erase("shared_expert_intermediate_size"); },
       "missing required key 'shared_expert_intermediate_size'"},
      {"Fm not an integer", [](json& j) { j["moe_intermediate_size"] = 2.5; },
       "'moe_intermediate_size' must be an integer"},
      {"step 0", [](json& j) { j["decoder_sparse_step"] = 0; },
       "'decoder_sparse_step' = 0 is out of range"},
      {"step -1", [](json& j) { j["decoder_sparse_step"] = -1; },
       "'decoder_sparse_step' = -1 is out of range"},
      {"mlp_only_layers past the end", [](json& j) { j["mlp_only_layers"] = {1, 4}; },
       "'mlp_only_layers' entry 4 is out of range [0, 3]"},
      {"mlp_only_layers negative", [](json& j) { j["mlp_only_layers"] = {-1}; },
       "'mlp_only_layers' entry -1 is out of range [0, 3]"},
      {"mlp_only_layers duplicate", [](json& j) { j["mlp_only_layers"] = {2, 0, 2}; },
       "'mlp_only_layers' lists layer 2 more than once"},
      {"mlp_only_layers not a list", [](json& j) { j["mlp_only_layers"] = 1; },
       "key 'mlp_only_layers' must be a list of layer indices"},
      {"mlp_only_layers of floats", [](json& j) { j["mlp_only_layers"] = {1.5}; },
       "key 'mlp_only_layers' must be a list of layer indices (integers)"},
      {"mlp_only_layers too long", [](json& j) { j["mlp_only_layers"] = {0, 1, 2, 3, 0}; },
       "'mlp_only_layers' lists more layers than 'num_hidden_layers' (4)"},
      {"attention_bias false", [](json& j) { j["attention_bias"] = false; },
       "key 'attention_bias' is false, but qwen2_moe always has q/k/v biases"},
      {"qkv_bias false", [](json& j) { j["qkv_bias"] = false; },
       "key 'qkv_bias' is false, but qwen2_moe always has q/k/v biases"},
      {"norm_topk_prob not a bool", [](json& j) { j["norm_topk_prob"] = "yes"; },
       "key 'norm_topk_prob' must be true or false"},
      {"output_router_logits not a bool", [](json& j) { j["output_router_logits"] = 1; },
       "key 'output_router_logits' must be true or false"},
      {"aux coef negative", [](json& j) { j["router_aux_loss_coef"] = -0.1; },
       "'router_aux_loss_coef' must be a finite number >= 0"},
      {"aux coef a string", [](json& j) { j["router_aux_loss_coef"] = "0.1"; },
       "key 'router_aux_loss_coef' must be a number"},
      {"too large", [](json& j) {
         j["hidden_size"] = 4096;
         j["num_attention_heads"] = 32;
         j["num_key_value_heads"] = 32;
         j["num_experts"] = 4096;
         j["moe_intermediate_size"] = 4096;
       },
       "the configured model is too large"},
  };
  for (const Bad& b : bad) {
    json j = moe_json();
    b.edit(j);
    const std::string err = error_of(j);
    EXPECT_NE(err.find("moe/config.json: "), std::string::npos) << b.what << ": " << err;
    EXPECT_NE(err.find(b.expect), std::string::npos) << b.what << ": " << err;
  }
  // The unsupported-model_type message lists the new type.
  json j = moe_json();
  j["model_type"] = "mixtral";
  EXPECT_NE(error_of(j).find("expected llama, qwen2 or qwen2_moe"), std::string::npos);
}

TEST(MoeConfig, ValidateRejectsProgrammaticConfigsWithoutBiases) {
  ModelConfig c = parse(moe_json());
  c.attention_bias = false;
  try {
    validate_config(c, "cfg");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'attention_bias' must be true"), std::string::npos)
        << e.what();
  }
  c.attention_bias = true;
  c.num_experts_per_tok = 7;
  EXPECT_THROW(validate_config(c, "cfg"), Error);
  c.num_experts_per_tok = 2;
  c.mlp_only_layers = {0, 0};
  EXPECT_THROW(validate_config(c, "cfg"), Error);
  c.mlp_only_layers = {};
  c.router_aux_loss_coef = NAN;
  EXPECT_THROW(validate_config(c, "cfg"), Error);
}

TEST(MoeConfig, SparseLayerRule) {
  json j = moe_json();
  j["num_hidden_layers"] = 6;
  EXPECT_EQ(sparse_layers(parse(j)), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  j["decoder_sparse_step"] = 2;  // (l + 1) % 2 == 0
  EXPECT_EQ(sparse_layers(parse(j)), (std::vector<int64_t>{1, 3, 5}));
  j["decoder_sparse_step"] = 3;
  EXPECT_EQ(sparse_layers(parse(j)), (std::vector<int64_t>{2, 5}));
  j["decoder_sparse_step"] = 7;  // no layer reaches it: a dense model with the MoE keys
  EXPECT_EQ(sparse_layers(parse(j)), std::vector<int64_t>{});
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = {0, 4};
  EXPECT_EQ(sparse_layers(parse(j)), (std::vector<int64_t>{1, 2, 3, 5}));
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  EXPECT_EQ(sparse_layers(parse(j)), (std::vector<int64_t>{1, 5}));
  const ModelConfig c = parse(j);
  EXPECT_FALSE(c.is_sparse_layer(-1));
  EXPECT_FALSE(c.is_sparse_layer(3));
}

TEST(MoeLayout, NamesShapesKindsAndOffsets) {
  json j = moe_json();
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = {2};
  j["num_hidden_layers"] = 3;
  const ModelConfig c = parse(j);
  const ParamLayout p = ParamLayout::build(c);
  const int64_t D = 32, F = 48, E = 4, Fm = 24, Fs = 40;
  ASSERT_EQ(p.layers.size(), 3u);

  // Offsets are contiguous in registration order.
  int64_t at = 0;
  for (const auto& q : p.params) {
    EXPECT_EQ(q.offset, at) << q.name;
    at += q.numel;
  }
  EXPECT_EQ(at, p.total);

  // The exact tensor order of a sparse layer: attention as §5, then the MLP in Hugging Face's
  // module order.
  std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"input_layernorm.weight", {D}},
      {"self_attn.q_proj.weight", {32, D}},
      {"self_attn.q_proj.bias", {32}},
      {"self_attn.k_proj.weight", {16, D}},
      {"self_attn.k_proj.bias", {16}},
      {"self_attn.v_proj.weight", {16, D}},
      {"self_attn.v_proj.bias", {16}},
      {"self_attn.o_proj.weight", {D, 32}},
      {"self_attn.beta", {4}},
      {"post_attention_layernorm.weight", {D}},
      {"mlp.gate.weight", {E, D}}};
  for (int e = 0; e < E; ++e) {
    const std::string x = "mlp.experts." + std::to_string(e) + ".";
    want.push_back({x + "gate_proj.weight", {Fm, D}});
    want.push_back({x + "up_proj.weight", {Fm, D}});
    want.push_back({x + "down_proj.weight", {D, Fm}});
  }
  want.push_back({"mlp.shared_expert.gate_proj.weight", {Fs, D}});
  want.push_back({"mlp.shared_expert.up_proj.weight", {Fs, D}});
  want.push_back({"mlp.shared_expert.down_proj.weight", {D, Fs}});
  want.push_back({"mlp.shared_expert_gate.weight", {1, D}});
  const size_t per_sparse = want.size();
  ASSERT_EQ(p.params.size(), 1 + 2 * per_sparse + 13 + 2);  // embed, 2 sparse, 1 dense, norm, lm
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < per_sparse; ++i) {
      const ParamInfo& q = p.params[1 + size_t(l) * per_sparse + i];
      EXPECT_EQ(q.name, "model.layers." + std::to_string(l) + "." + want[i].first);
      EXPECT_EQ(q.shape, want[i].second) << q.name;
    }

  for (int l = 0; l < 2; ++l) {
    const LayerOffsets& o = p.layers[size_t(l)];
    const std::string pre = "model.layers." + std::to_string(l) + ".mlp.";
    auto off = [&](const std::string& n) {
      const ParamInfo* q = p.find(pre + n);
      return q ? q->offset : int64_t(-2);
    };
    EXPECT_TRUE(o.sparse);
    EXPECT_EQ(o.w_gate, -1);
    EXPECT_EQ(o.w_up, -1);
    EXPECT_EQ(o.w_down, -1);
    EXPECT_EQ(o.router, off("gate.weight"));
    EXPECT_EQ(p.find(pre + "gate.weight")->kind, ParamKind::Router);
    EXPECT_EQ(o.shared_gate, off("shared_expert_gate.weight"));
    EXPECT_EQ(p.find(pre + "shared_expert_gate.weight")->kind, ParamKind::Router);
    ASSERT_EQ(o.experts.size(), size_t(E));
    for (int e = 0; e < E; ++e) {
      const std::string x = "experts." + std::to_string(e) + ".";
      EXPECT_EQ(o.experts[size_t(e)].w_gate, off(x + "gate_proj.weight"));
      EXPECT_EQ(o.experts[size_t(e)].w_up, off(x + "up_proj.weight"));
      EXPECT_EQ(o.experts[size_t(e)].w_down, off(x + "down_proj.weight"));
      EXPECT_EQ(p.find(pre + x + "up_proj.weight")->kind, ParamKind::Matrix);
    }
    EXPECT_EQ(o.shared.w_gate, off("shared_expert.gate_proj.weight"));
    EXPECT_EQ(o.shared.w_up, off("shared_expert.up_proj.weight"));
    EXPECT_EQ(o.shared.w_down, off("shared_expert.down_proj.weight"));
    EXPECT_EQ(p.find(pre + "shared_expert.down_proj.weight")->kind, ParamKind::Matrix);
    EXPECT_GE(o.bq, 0);  // qwen2_moe: q/k/v biases
    EXPECT_GE(o.bk, 0);
    EXPECT_GE(o.bv, 0);
  }

  // Layer 2 is in mlp_only_layers: the dense MLP of §2, none of the sparse fields.
  const LayerOffsets& d = p.layers[2];
  EXPECT_FALSE(d.sparse);
  EXPECT_EQ(d.router, -1);
  EXPECT_EQ(d.shared_gate, -1);
  EXPECT_TRUE(d.experts.empty());
  EXPECT_EQ(d.shared.w_gate, -1);
  EXPECT_EQ(d.w_gate, p.find("model.layers.2.mlp.gate_proj.weight")->offset);
  EXPECT_EQ(d.w_up, p.find("model.layers.2.mlp.up_proj.weight")->offset);
  EXPECT_EQ(d.w_down, p.find("model.layers.2.mlp.down_proj.weight")->offset);
  EXPECT_EQ(p.find("model.layers.2.mlp.down_proj.weight")->shape, (std::vector<int64_t>{D, F}));
  EXPECT_EQ(p.find("model.layers.2.mlp.gate.weight"), nullptr);

  // Parameter count: attention and norms per layer, the MLPs, embeddings.
  const int64_t attn = D + 32 * D + 32 + 2 * (16 * D + 16) + D * 32 + 4 + D;
  const int64_t sparse_mlp = E * D + E * 3 * Fm * D + 3 * Fs * D + D;
  EXPECT_EQ(p.total, 2 * 300 * D + D + 3 * attn + 2 * sparse_mlp + 3 * F * D);
}

TEST(MoeLayout, DenseLayoutsAreUnchanged) {
  // A qwen2 config with MoE keys (kept as extras) has the layout of the same config without
  // them, tensor for tensor, and it is SPEC §5's list in order.
  json j = moe_json();
  j["model_type"] = "qwen2";
  const ParamLayout a = ParamLayout::build(parse(j));
  for (const char* k : {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                        "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                        "mlp_only_layers", "router_aux_loss_coef", "output_router_logits"})
    j.erase(k);
  const ParamLayout b = ParamLayout::build(parse(j));
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(a.total, b.total);
  const char* per_layer[] = {"input_layernorm.weight",  "self_attn.q_proj.weight",
                             "self_attn.q_proj.bias",   "self_attn.k_proj.weight",
                             "self_attn.k_proj.bias",   "self_attn.v_proj.weight",
                             "self_attn.v_proj.bias",   "self_attn.o_proj.weight",
                             "self_attn.beta",          "post_attention_layernorm.weight",
                             "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                             "mlp.down_proj.weight"};
  std::vector<std::string> want = {"model.embed_tokens.weight"};
  for (int l = 0; l < 4; ++l)
    for (const char* n : per_layer) want.push_back("model.layers." + std::to_string(l) + "." + n);
  want.push_back("model.norm.weight");
  want.push_back("lm_head.weight");
  ASSERT_EQ(a.params.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(a.params[i].name, want[i]);
    EXPECT_EQ(a.params[i].name, b.params[i].name);
    EXPECT_EQ(a.params[i].offset, b.params[i].offset);
    EXPECT_EQ(a.params[i].shape, b.params[i].shape);
    EXPECT_NE(a.params[i].kind, ParamKind::Router);
  }
  for (const auto& o : a.layers) {
    EXPECT_FALSE(o.sparse);
    EXPECT_TRUE(o.experts.empty());
    EXPECT_EQ(o.router, -1);
  }
}

TEST(MoeModel, InitSaveLoadRoundTrip) {
  json j = moe_json();
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  j["norm_topk_prob"] = true;
  j["output_router_logits"] = true;
  j["tie_word_embeddings"] = true;
  const ModelConfig c = parse(j);
  EXPECT_EQ(sparse_layers(c), std::vector<int64_t>{1});
  const Model<float> m = init_model(c, {7, 0.02, -1.5});
  // Routers drawn like matrices (normal, init_std), not left at zero or one.
  for (const auto& p : m.layout.params) {
    if (p.kind != ParamKind::Router) continue;
    double s2 = 0;
    for (int64_t i = 0; i < p.numel; ++i)
      s2 += double(m.weights[size_t(p.offset + i)]) * double(m.weights[size_t(p.offset + i)]);
    const double sd = std::sqrt(s2 / double(p.numel));
    EXPECT_GT(sd, 0.01) << p.name;
    EXPECT_LT(sd, 0.04) << p.name;
  }
  EXPECT_EQ(m.weights[size_t(m.layout.layers[1].beta)], -1.5f);

  const fs::path d = testutil::temp_dir("moe_roundtrip");
  save_model(m, (d / "m").string());
  const json written = json::parse(std::ifstream(d / "m/config.json"));
  EXPECT_EQ(written["model_type"], "qwen2_moe");
  EXPECT_EQ(written["mlp_only_layers"], json({3}));
  EXPECT_EQ(written["decoder_sparse_step"], 2);
  const Model<float> back = load_model((d / "m").string());
  expect_same_config(back.config, m.config);
  EXPECT_EQ(back.layout.total, m.layout.total);
  EXPECT_EQ(back.weights, m.weights);
  EXPECT_EQ(back.layout.layers[1].experts.size(), 4u);
  EXPECT_EQ(back.layout.layers[1].router, m.layout.layers[1].router);

  // The file holds the §7 names.
  auto f = io::SafetensorsFile::open((d / "m/model.safetensors").string());
  EXPECT_NE(f->find("model.layers.1.mlp.experts.3.down_proj.weight"), nullptr);
  EXPECT_NE(f->find("model.layers.1.mlp.shared_expert_gate.weight"), nullptr);
  EXPECT_NE(f->find("model.layers.0.mlp.gate_proj.weight"), nullptr);
  EXPECT_EQ(f->find("model.layers.0.mlp.gate.weight"), nullptr);
  f.reset();
  fs::remove_all(d);
}

TEST(MoeModel, LoadNamesAMissingExpertTensor) {
  json j = moe_json();
  j["num_hidden_layers"] = 2;
  const ModelConfig c = parse(j);
  const fs::path d = testutil::temp_dir("moe_missing");
  save_model(init_model(c, {3, 0.02, 0.0}), (d / "m").string());
  auto drop = [&](const std::string& name) {
    auto f = io::SafetensorsFile::open((d / "m/model.safetensors").string());
    std::vector<io::RawTensor> keep;
    for (const auto& t : f->tensors())
      if (t.name != name)
        keep.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    f.reset();
    io::write_safetensors_raw((d / "m/model.safetensors").string(), keep);
  };
  auto load_error = [&] {
    try {
      load_model((d / "m").string());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  drop("model.layers.1.mlp.experts.2.up_proj.weight");
  EXPECT_NE(load_error().find("tensor 'model.layers.1.mlp.experts.2.up_proj.weight' is missing"),
            std::string::npos)
      << load_error();
  // The same files read with layer 1 dense (mlp_only_layers): the message says the checkpoint
  // has experts there.
  save_model(init_model(c, {3, 0.02, 0.0}), (d / "m").string());
  json cj = json::parse(std::ifstream(d / "m/config.json"));
  cj["mlp_only_layers"] = {1};
  std::ofstream(d / "m/config.json") << cj.dump();
  const std::string e = load_error();
  EXPECT_NE(e.find("tensor 'model.layers.1.mlp.gate_proj.weight' is missing"), std::string::npos)
      << e;
  EXPECT_NE(e.find("has experts in layer 1"), std::string::npos) << e;
  // And the reverse: dense layers in the files where the config wants experts.
  json dense = j;
  dense["mlp_only_layers"] = {0, 1};
  save_model(init_model(parse(dense), {3, 0.02, 0.0}), (d / "m").string());
  std::ofstream(d / "m/config.json") << config_to_json(c).dump();  // both layers sparse
  const std::string r = load_error();
  EXPECT_NE(r.find("tensor 'model.layers.0.mlp.gate.weight' is missing"), std::string::npos) << r;
  EXPECT_NE(r.find("has a dense MLP in layer 0"), std::string::npos) << r;
  // A router of the wrong expert count is a shape error naming it.
  json more = j;
  more["num_experts"] = 5;
  save_model(init_model(parse(more), {3, 0.02, 0.0}), (d / "m").string());
  std::ofstream(d / "m/config.json") << config_to_json(c).dump();
  const std::string s = load_error();
  EXPECT_NE(s.find("tensor 'model.layers.0.mlp.gate.weight' has shape [5, 32], expected [4, 32]"),
            std::string::npos)
      << s;
  fs::remove_all(d);
}

TEST(MoeOptimizer, RoutersHaveTheirOwnGroup) {
  json j = moe_json();
  j["mlp_only_layers"] = {0};
  const ParamLayout p = ParamLayout::build(parse(j));
  const auto groups = train::model_param_groups(p, 0.01, 0.5, 0.1);
  std::vector<std::string> names;
  for (const auto& g : groups) names.push_back(g.name);
  EXPECT_EQ(names, (std::vector<std::string>{"matrices", "norms", "gates", "routers"}));
  const train::ParamGroup& r = groups.back();
  EXPECT_EQ(r.lr, 0.01);  // the matrices' hyperparameters
  EXPECT_EQ(r.weight_decay, 0.1);
  std::set<int64_t> want;
  for (const auto& o : p.layers)
    if (o.sparse) {
      want.insert(o.router);
      want.insert(o.shared_gate);
    }
  EXPECT_EQ(want.size(), 6u);  // layers 1..3
  std::set<int64_t> got;
  for (const auto& range : r.ranges) got.insert(range.offset);
  EXPECT_EQ(got, want);
  // Every parameter in exactly one group.
  int64_t covered = 0;
  for (const auto& g : groups)
    for (const auto& range : g.ranges) covered += range.count;
  EXPECT_EQ(covered, p.total);
  train::AdamW opt(p.total, groups);  // groups do not overlap

  // A dense model has no routers group: its groups (and saved optimizer states) are as before.
  j["model_type"] = "qwen2";
  names.clear();
  for (const auto& g : train::model_param_groups(ParamLayout::build(parse(j)), 0.01, 0.5, 0.1))
    names.push_back(g.name);
  EXPECT_EQ(names, (std::vector<std::string>{"matrices", "norms", "gates"}));
}
