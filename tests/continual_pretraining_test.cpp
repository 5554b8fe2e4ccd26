// The continual pre-training path of docs/huggingface.md, end to end through the built binary:
// a plain Hugging Face Llama checkpoint (no infini block, no beta tensors, the real Llama 2
// tokenizer) is converted, pre-trained further with `infini train --model`, fine-tuned on
// passkey retrieval with a LoRA adapter, merged, and exported back to Hugging Face layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "model/model.hpp"
#include "util/cli.hpp"
#include "util/hf_checkpoint.hpp"

using namespace infini;
using namespace infini::testutil;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kTokenizers = fs::path(INFINI_SOURCE_DIR) / "tests/data/tokenizers/llama2";

json json_of(const CliResult& r, const std::string& what) {
  EXPECT_EQ(r.code, 0) << what << ": " << r.err;
  const json j = json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << what << " printed no JSON: " << r.out;
  return j;
}

json read_json(const fs::path& p) {
  const json j = json::parse(read_file(p), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << p;
  return j;
}

// The F32 values of a tensor (empty when it is missing or not F32, with a failure).
std::vector<float> f32_tensor(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  EXPECT_NE(t, nullptr) << name << " not in " << f.path();
  if (!t) return {};
  EXPECT_EQ(t->dtype, io::DType::F32) << name;
  if (t->dtype != io::DType::F32) return {};
  std::vector<float> v(size_t(t->numel()));
  std::memcpy(v.data(), t->data, t->nbytes);
  return v;
}

// One parameter of a loaded model, by name (empty, with a failure, when it has none).
std::vector<float> param(const model::Model<float>& m, const std::string& name) {
  const auto& p = m.layout.params;
  const auto it = std::find_if(p.begin(), p.end(), [&](const auto& x) { return x.name == name; });
  EXPECT_NE(it, p.end()) << name;
  if (it == p.end()) return {};
  return std::vector<float>(m.weights.begin() + it->offset,
                            m.weights.begin() + it->offset + it->numel);
}

// The loss of `infini eval` on one file (the whole file as one sequence), and its token count.
struct Eval {
  double loss = NAN;
  int64_t tokens = 0;
};
Eval eval(const fs::path& model, const fs::path& data) {
  const json j =
      json_of(run_infini("eval --json --model " + model.string() + " --data " + data.string()),
              "eval " + model.string());
  if (!j.is_object()) return {};
  return {j.value("loss", double(NAN)), j.value("tokens", int64_t(0))};
}

}  // namespace

TEST(ContinualPretraining, HuggingFaceLlamaToTrainedInfiniAndBack) {
  const fs::path d = temp_dir("continual");
  constexpr int kLayers = 2, kHeads = 4, kKvHeads = 2, kHeadDim = 8, kHidden = 32;

  // 1. A plain Hugging Face Llama checkpoint, as downloaded: no infini block, no gates.
  HfCheckpoint spec;
  spec.vocab_size = 32000;
  spec.hidden_size = kHidden;
  spec.intermediate_size = 64;
  spec.num_layers = kLayers;
  spec.num_heads = kHeads;
  spec.num_kv_heads = kKvHeads;
  spec.head_dim = kHeadDim;
  spec.init_std = 0.02;
  spec.tokenizer = kTokenizers / "tokenizer.json";
  const model::Model<float> plain = write_hf_checkpoint(spec, d / "hf");
  fs::copy_file(kTokenizers / "tokenizer_config.json", d / "hf/tokenizer_config.json");
  ASSERT_FALSE(read_json(d / "hf/config.json").contains("infini"));
  {
    const auto f = io::SafetensorsFile::open((d / "hf/model.safetensors").string());
    for (const auto& t : f->tensors())
      ASSERT_EQ(t.name.find("beta"), std::string::npos) << "the fixture is not a plain checkpoint";
  }

  // 2. Convert: the infini block and beta tensors (at --gate-init) are added, the rest kept.
  const fs::path C = d / "converted";
  CliResult r = run_infini("convert --from " + (d / "hf").string() + " --out " + C.string() +
                           " --segment-length 32 --memory-update delta --gate-init -3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("gate init -3"), std::string::npos) << r.out;
  {
    const json cfg = read_json(C / "config.json");
    ASSERT_TRUE(cfg.contains("infini")) << cfg.dump();
    EXPECT_EQ(cfg["infini"]["segment_length"], 32);
    EXPECT_EQ(cfg["infini"]["memory_update"], "delta");
    EXPECT_EQ(cfg["infini"]["use_memory"], true);
    EXPECT_EQ(cfg["model_type"], "llama");
    EXPECT_EQ(cfg["num_key_value_heads"], kKvHeads);
    EXPECT_EQ(read_file(C / "tokenizer.json"), read_file(kTokenizers / "tokenizer.json"));
    EXPECT_TRUE(fs::exists(C / "tokenizer_config.json"));
    const auto f = io::SafetensorsFile::open((C / "model.safetensors").string());
    for (int l = 0; l < kLayers; ++l) {
      const auto beta = f32_tensor(*f, "model.layers." + std::to_string(l) + ".self_attn.beta");
      EXPECT_EQ(beta, std::vector<float>(kHeads, -3.0f)) << "layer " << l;
    }
    // The pretrained weights are carried over unchanged.
    for (const auto& name : {"model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight",
                             "model.layers.0.input_layernorm.weight", "lm_head.weight"})
      EXPECT_EQ(f32_tensor(*f, name), param(plain, name)) << name;
  }

  // 3. Continual pre-training on a few documents: the loss on them goes down.
  const fs::path docs = d / "docs";
  fs::create_directories(docs);
  {
    static const char* words[] = {"the ",  "quick ", "brown ", "fox ",  "jumps ", "over ",
                                  "lazy ", "dog ",   "and ",   "a ",    "cat ",   "sat ",
                                  "on ",   "mat ",   "while ", "rain ", "fell. "};
    for (int i = 0; i < 3; ++i) {
      std::mt19937_64 g(uint64_t(i) + 1);
      std::string s;
      while (s.size() < 2700) s += words[g() % (sizeof words / sizeof *words)];
      std::ofstream(docs / ("doc" + std::to_string(i) + ".txt")) << s;
    }
  }
  const fs::path doc = docs / "doc0.txt";
  const Eval before = eval(C, doc);
  ASSERT_TRUE(std::isfinite(before.loss));
  // The Llama 2 tokenizer, not the byte fallback, reads the text: far fewer tokens than bytes.
  EXPECT_LT(before.tokens, int64_t(fs::file_size(doc)) / 2);
  EXPECT_NEAR(before.loss, std::log(32000.0), 0.5);  // fresh weights: near uniform

  const fs::path R = d / "run";
  r = run_infini("train --model " + C.string() + " --data " + docs.string() + " --out " +
                 R.string() +
                 " --steps 30 --seq-len 64 --batch 2 --lr 3e-3 --warmup 3 --eval-every 0"
                 " --save-every 0 --log-every 10 --seed 1");
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(fs::exists(R / "final/config.json")) << r.err;
  EXPECT_EQ(read_file(R / "final/tokenizer.json"), read_file(kTokenizers / "tokenizer.json"));
  const model::Model<float> trained = model::load_model((R / "final").string());
  EXPECT_TRUE(trained.config.use_memory);
  EXPECT_EQ(trained.config.segment_length, 32);
  EXPECT_EQ(trained.config.memory_update, model::MemoryUpdate::Delta);
  {
    // Training started from the converted weights, not from fresh ones: the embedding rows of
    // the many tokens the documents never use are only shrunk by weight decay.
    const auto a = param(plain, "model.embed_tokens.weight");
    const auto b = param(trained, "model.embed_tokens.weight");
    ASSERT_EQ(a.size(), b.size());
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      ab += double(a[i]) * b[i];
      aa += double(a[i]) * a[i];
      bb += double(b[i]) * b[i];
    }
    EXPECT_GT(ab / std::sqrt(aa * bb), 0.9);
  }
  const Eval after = eval(R / "final", doc);
  ASSERT_TRUE(std::isfinite(after.loss));
  EXPECT_EQ(after.tokens, before.tokens);
  EXPECT_LT(after.loss, before.loss - 1.0) << "before " << before.loss;
  {
    // The gates are trained too: they left their initial value.
    const auto f = io::SafetensorsFile::open((R / "final/model.safetensors").string());
    double moved = 0;
    for (int l = 0; l < kLayers; ++l)
      for (float b : f32_tensor(*f, "model.layers." + std::to_string(l) + ".self_attn.beta"))
        moved = std::max(moved, std::abs(double(b) + 3.0));
    EXPECT_GT(moved, 1e-3);
  }

  // 4. LoRA passkey fine-tuning. The shortest prompt the Llama 2 tokenizer allows is read from
  // the error for a too-short --min-len.
  const std::string pk_train = "passkey train --model " + (R / "final").string() +
                               " --lora-rank 4 --lora-alpha 8 --eval-every 0 --save-every 0"
                               " --batch 2 --steps 6 --lr 0.05 --warmup 1 --seed 1";
  r = run_infini(pk_train + " --out " + (d / "too_short").string() + " --min-len 2 --max-len 2");
  ASSERT_NE(r.code, 0);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("shortest sample \\((\\d+) tokens\\)")))
      << r.err;
  const int64_t shortest = std::stoll(m[1]);
  ASSERT_GT(shortest, 2);
  const fs::path P = d / "passkey";
  r = run_infini(pk_train + " --out " + P.string() + " --min-len " + std::to_string(shortest) +
                 " --max-len " + std::to_string(shortest + 18));
  ASSERT_EQ(r.code, 0) << r.err;
  {
    const json ac = read_json(P / "final/adapter_config.json");
    EXPECT_EQ(ac["peft_type"], "LORA");
    EXPECT_EQ(ac["r"], 4);
    EXPECT_EQ(ac["lora_alpha"].get<double>(), 8.0);
    EXPECT_EQ(ac["target_modules"], json::array({"q_proj", "k_proj", "v_proj", "o_proj"}));
    const auto f = io::SafetensorsFile::open((P / "final/adapter_model.safetensors").string());
    const std::map<std::string, std::pair<int64_t, int64_t>> in_out = {
        {"q_proj", {kHidden, kHeads * kHeadDim}},
        {"k_proj", {kHidden, kKvHeads * kHeadDim}},
        {"v_proj", {kHidden, kKvHeads * kHeadDim}},
        {"o_proj", {kHeads * kHeadDim, kHidden}}};
    double b_norm = 0;
    for (int l = 0; l < kLayers; ++l)
      for (const auto& [mod, io_dims] : in_out) {
        const std::string pre =
            "base_model.model.model.layers." + std::to_string(l) + ".self_attn." + mod;
        const io::TensorInfo* a = f->find(pre + ".lora_A.weight");
        const io::TensorInfo* b = f->find(pre + ".lora_B.weight");
        ASSERT_NE(a, nullptr) << pre;
        ASSERT_NE(b, nullptr) << pre;
        EXPECT_EQ(a->shape, std::vector<int64_t>({4, io_dims.first})) << pre;
        EXPECT_EQ(b->shape, std::vector<int64_t>({io_dims.second, 4})) << pre;
        for (float x : f32_tensor(*f, pre + ".lora_B.weight")) b_norm += std::abs(x);
      }
    EXPECT_GT(b_norm, 0.0) << "lora_B starts at zero; training must have moved it";
  }

  // 5. Merge; the merged model and base + adapter answer identically.
  const fs::path M = d / "merged";
  r = run_infini("lora merge --model " + (R / "final").string() + " --adapter " +
                 (P / "final").string() + " --out " + M.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string grid = " --lengths " + std::to_string(shortest) + "," +
                           std::to_string(shortest + 22) +
                           " --depths 0.5 --trials 2 --seed 3 --json";
  const json merged = json_of(run_infini("passkey eval --model " + M.string() + grid), "merged");
  const json adapted = json_of(run_infini("passkey eval --model " + (R / "final").string() +
                                          " --adapter " + (P / "final").string() + grid),
                               "adapter");
  const json base =
      json_of(run_infini("passkey eval --model " + (R / "final").string() + grid), "base");
  ASSERT_TRUE(merged.contains("results")) << merged.dump();
  ASSERT_TRUE(adapted.contains("results")) << adapted.dump();
  EXPECT_EQ(merged["results"].size(), 2u);
  EXPECT_EQ(merged["results"], adapted["results"]);
  EXPECT_EQ(merged["gates"], adapted["gates"]);
  // ... and the adapter matters, so the comparison above could fail.
  EXPECT_NE(merged["results"], base["results"]);
  EXPECT_NE(merged["gates"], base["gates"]);

  // 6. Export to Hugging Face layout: the gates and the infini block stay, and it says so.
  const fs::path H = d / "hf_out";
  r = run_infini("export --model " + M.string() + " --out " + H.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("self_attn.beta"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kept"), std::string::npos) << r.out;
  {
    const json cfg = read_json(H / "config.json");
    EXPECT_EQ(cfg["model_type"], "llama");
    EXPECT_EQ(cfg["architectures"], json::array({"LlamaForCausalLM"}));
    EXPECT_EQ(cfg["vocab_size"], 32000);
    ASSERT_TRUE(cfg.contains("infini")) << cfg.dump();
    EXPECT_EQ(cfg["infini"]["segment_length"], 32);
    EXPECT_EQ(read_file(H / "tokenizer.json"), read_file(kTokenizers / "tokenizer.json"));
    const auto h = io::SafetensorsFile::open((H / "model.safetensors").string());
    const auto mm = io::SafetensorsFile::open((M / "model.safetensors").string());
    EXPECT_NE(h->find("model.embed_tokens.weight"), nullptr);
    EXPECT_NE(h->find("lm_head.weight"), nullptr);
    EXPECT_EQ(h->tensors().size(), mm->tensors().size());
    for (int l = 0; l < kLayers; ++l) {
      const std::string beta = "model.layers." + std::to_string(l) + ".self_attn.beta";
      const auto got = f32_tensor(*h, beta);
      EXPECT_EQ(got.size(), size_t(kHeads)) << beta;
      EXPECT_EQ(got, f32_tensor(*mm, beta)) << beta;
    }
  }
  // The exported directory is the same model, and converting it again keeps the trained gates
  // and the infini block (nothing is re-initialised).
  const Eval merged_eval = eval(M, doc);
  EXPECT_EQ(eval(H, doc).loss, merged_eval.loss);
  r = run_infini("convert --from " + H.string() + " --out " + (d / "again").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(eval(d / "again", doc).loss, merged_eval.loss);
  fs::remove_all(d);
}
