// The continual pre-training path for the seed's model family (Qwen2-MoE, SPEC §7), end to end
// through the built binary: a synthetic Hugging Face qwen2_moe checkpoint (sharded, BF16) is
// converted with closed gates (which must equal segment-local attention), pre-trained further
// (the loss goes down), fine-tuned on passkey retrieval with LoRA (experts frozen), merged,
// streamed through `generate` with a saved state, and exported.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "model/model.hpp"
#include "util/cli.hpp"
#include "util/hf_checkpoint.hpp"

using namespace infini;
using namespace infini::testutil;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double eval_loss(const fs::path& model, const fs::path& data) {
  const CliResult r = run_infini("eval --json --model " + model.string() + " --data " + data.string());
  EXPECT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out, nullptr, false);
  return j.is_object() ? j.value("loss", double(NAN)) : double(NAN);
}

std::vector<float> param(const model::Model<float>& m, const std::string& name) {
  const model::ParamInfo* p = m.layout.find(name);
  EXPECT_NE(p, nullptr) << name;
  if (!p) return {};
  return {m.weights.begin() + p->offset, m.weights.begin() + p->offset + p->numel};
}

}  // namespace

TEST(MoeContinualPretraining, HuggingFaceQwen2MoeToTrainedInfiniAndBack) {
  const fs::path d = temp_dir("moe_continual");
  HfCheckpoint spec;
  spec.model_type = "qwen2_moe";
  spec.vocab_size = 32000;
  spec.num_layers = 3;
  spec.num_heads = 4;
  spec.num_kv_heads = 2;
  spec.mlp_only_layers = {1};  // layers 0 and 2 sparse, 1 dense
  spec.bf16 = true;
  spec.sharded = true;
  spec.init_std = 0.05;
  spec.tokenizer = fs::path(INFINI_SOURCE_DIR) / "tests/data/tokenizers/llama2/tokenizer.json";
  write_hf_checkpoint(spec, d / "hf");

  // Closed gates: sigmoid(-30) ~ 1e-13 of the memory's read is mixed in.
  const fs::path C = d / "converted";
  CliResult r = run_infini("convert --from " + (d / "hf").string() + " --out " + C.string() +
                           " --segment-length 16 --memory-update delta --gate-init -30");
  ASSERT_EQ(r.code, 0) << r.err;
  const model::Model<float> conv = model::load_model(C.string());
  ASSERT_TRUE(conv.config.is_moe());
  ASSERT_TRUE(conv.layout.layers[0].sparse && !conv.layout.layers[1].sparse);

  // The same weights without the memory path: segment-local attention only.
  model::ModelConfig lc = conv.config;
  lc.use_memory = false;
  model::Model<float> local = model::init_model(lc, {});
  for (const auto& p : local.layout.params) {
    const auto v = param(conv, p.name);
    ASSERT_EQ(int64_t(v.size()), p.numel) << p.name;
    std::copy(v.begin(), v.end(), local.weights.begin() + p.offset);
  }
  model::save_model(local, (d / "local").string());
  fs::copy_file(C / "tokenizer.json", d / "local/tokenizer.json");

  const fs::path docs = d / "docs";
  fs::create_directories(docs);
  static const char* words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ",
                                "dog ", "and ", "a ",  "cat ",   "sat ",  "on ",   "mat. "};
  for (int i = 0; i < 2; ++i) {
    std::mt19937_64 g(uint64_t(i) + 1);
    std::string s;
    while (s.size() < 2500) s += words[g() % (sizeof words / sizeof *words)];
    std::ofstream(docs / ("doc" + std::to_string(i) + ".txt")) << s;
  }
  const fs::path doc = docs / "doc0.txt";
  const double closed = eval_loss(C, doc), plain_local = eval_loss(d / "local", doc);
  ASSERT_TRUE(std::isfinite(closed));
  EXPECT_NEAR(closed, plain_local, 1e-5 * plain_local);

  // Continual pre-training lowers the loss; experts, routers and the shared expert train.
  const fs::path R = d / "run";
  r = run_infini("train --model " + C.string() + " --data " + docs.string() + " --out " +
                 R.string() +
                 " --steps 25 --seq-len 64 --batch 2 --lr 3e-3 --warmup 3 --eval-every 0"
                 " --save-every 0 --log-every 5 --seed 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const double after = eval_loss(R / "final", doc);
  EXPECT_LT(after, closed - 1.0) << "before " << closed;
  {
    std::ifstream metrics(R / "metrics.jsonl");
    std::string line, last;
    while (std::getline(metrics, line)) last = line;
    const json j = json::parse(last);
    EXPECT_TRUE(j.contains("aux_loss")) << last;
    EXPECT_EQ(j["expert_load_max"].size(), 2u) << last;  // two sparse layers
  }
  const model::Model<float> trained = model::load_model((R / "final").string());
  for (const char* name : {"model.layers.0.mlp.experts.1.down_proj.weight",
                           "model.layers.2.mlp.gate.weight",
                           "model.layers.2.mlp.shared_expert.up_proj.weight"})
    EXPECT_NE(param(trained, name), param(conv, name)) << name << " did not train";

  // LoRA passkey fine-tuning (q, k, v, o; experts frozen), merge, and base + adapter.
  const std::string pk = "passkey train --model " + (R / "final").string() +
                         " --lora-rank 4 --eval-every 0 --save-every 0 --batch 2 --steps 4"
                         " --lr 0.05 --warmup 1 --seed 1";
  r = run_infini(pk + " --out " + (d / "short").string() + " --min-len 2 --max-len 2");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("shortest sample \\((\\d+) tokens\\)")))
      << r.err;
  const int64_t shortest = std::stoll(m[1]);
  const fs::path P = d / "passkey";
  r = run_infini(pk + " --out " + P.string() + " --min-len " + std::to_string(shortest) +
                 " --max-len " + std::to_string(shortest + 10));
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path M = d / "merged";
  r = run_infini("lora merge --model " + (R / "final").string() + " --adapter " +
                 (P / "final").string() + " --out " + M.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const model::Model<float> merged = model::load_model(M.string());
  EXPECT_EQ(param(merged, "model.layers.0.mlp.experts.2.gate_proj.weight"),
            param(trained, "model.layers.0.mlp.experts.2.gate_proj.weight"));
  EXPECT_NE(param(merged, "model.layers.0.self_attn.q_proj.weight"),
            param(trained, "model.layers.0.self_attn.q_proj.weight"));
  const std::string grid =
      " --lengths " + std::to_string(shortest + 5) + " --depths 0.5 --trials 2 --seed 3 --json";
  const CliResult a = run_infini("passkey eval --model " + M.string() + grid);
  const CliResult b = run_infini("passkey eval --model " + (R / "final").string() +
                                 " --adapter " + (P / "final").string() + grid);
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(json::parse(a.out)["results"], json::parse(b.out)["results"]);

  // Streaming generation with a saved state: generating 6 then 4 tokens from the state equals
  // generating 10 at once (greedy).
  const std::string gen = "generate --model " + M.string() + " --prompt \"the quick brown\"" +
                          " --temperature 0 --ignore-eos";
  const CliResult whole = run_infini(gen + " --max-new-tokens 10");
  const CliResult first = run_infini(gen + " --max-new-tokens 6 --state-out " +
                                     (d / "state.bin").string());
  const CliResult rest = run_infini("generate --model " + M.string() + " --state-in " +
                                    (d / "state.bin").string() +
                                    " --temperature 0 --ignore-eos --max-new-tokens 4");
  ASSERT_EQ(whole.code, 0) << whole.err;
  ASSERT_EQ(rest.code, 0) << rest.err;
  auto strip = [](std::string s) {
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  };
  EXPECT_EQ(strip(first.out) + strip(rest.out), strip(whole.out));

  // Export back to the Hugging Face layout.
  r = run_infini("export --model " + M.string() + " --out " + (d / "hf_out").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const json cfg = json::parse(std::ifstream(d / "hf_out/config.json"));
  EXPECT_EQ(cfg["architectures"][0], "Qwen2MoeForCausalLM");
  EXPECT_EQ(cfg["model_type"], "qwen2_moe");
}
