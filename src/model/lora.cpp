#include "model/lora.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "ops/gemm.hpp"

namespace infini::model {

namespace fs = std::filesystem;

namespace {

const char* kModules[] = {"q_proj", "k_proj", "v_proj", "o_proj"};

std::string peft_prefix(int64_t layer) {
  return "base_model.model.model.layers." + std::to_string(layer) + ".self_attn.";
}

}  // namespace

LoraLayout LoraLayout::build(const ModelConfig& c, const ParamLayout& p, const LoraConfig& cfg) {
  if (cfg.rank < 1) throw Error("LoRA rank must be >= 1, got " + std::to_string(cfg.rank));
  if (!(cfg.alpha > 0)) throw Error("LoRA alpha must be positive");
  LoraLayout l;
  l.config = cfg;
  l.heads = c.num_heads;
  const int64_t D = c.hidden_size, r = cfg.rank;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const LayerOffsets& o = p.layers[size_t(layer)];
    const int64_t offs[] = {o.wq, o.wk, o.wv, o.wo};
    const int64_t outs[] = {c.q_width(), c.kv_width(), c.kv_width(), D};
    const int64_t ins[] = {D, D, D, c.q_width()};
    for (int i = 0; i < 4; ++i) {
      LoraSlot s;
      s.layer = layer;
      s.module = kModules[i];
      s.w = offs[i];
      s.out = outs[i];
      s.in = ins[i];
      s.a = l.total;
      l.total += r * s.in;
      s.b = l.total;
      l.total += s.out * r;
      l.slots.push_back(s);
    }
  }
  l.gate_begin = l.total;
  if (c.use_memory)
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      l.gates.push_back({layer, p.layers[size_t(layer)].beta, l.total});
      l.total += c.num_heads;
    }
  return l;
}

LoraAdapter<float> lora_init(const Model<float>& base, const LoraConfig& cfg, uint64_t seed) {
  LoraAdapter<float> a;
  a.layout = LoraLayout::build(base.config, base.layout, cfg);
  a.values.assign(size_t(a.layout.total), 0.0f);
  std::mt19937_64 rng(seed ^ 0x4C6F5241ULL);
  for (const auto& s : a.layout.slots) {
    const double bound = 1.0 / std::sqrt(double(s.in));
    std::uniform_real_distribution<double> u(-bound, bound);
    for (int64_t i = 0; i < cfg.rank * s.in; ++i) a.values[size_t(s.a + i)] = float(u(rng));
  }
  for (const auto& g : a.layout.gates)
    std::copy_n(base.weights.data() + g.model, a.layout.heads, a.values.data() + g.adapter);
  return a;
}

template <class T>
void lora_apply(const LoraLayout& l, const T* values, const Model<T>& base, Model<T>& out) {
  if (&out != &base) {
    out.config = base.config;
    out.layout = base.layout;
    out.weights = base.weights;
  }
  const T s = T(l.scale());
  for (const auto& sl : l.slots)
    ops::gemm<T>(false, false, sl.out, sl.in, l.config.rank, s, values + sl.b, l.config.rank,
                 values + sl.a, sl.in, T(1), out.weights.data() + sl.w, sl.in);
  for (const auto& g : l.gates) std::copy_n(values + g.adapter, l.heads, out.weights.data() + g.model);
}

template <class T>
void lora_map_gradient(const LoraLayout& l, const T* values, const T* model_grad, T* grad) {
  const T s = T(l.scale());
  const int64_t r = l.config.rank;
  for (const auto& sl : l.slots) {
    const T* dW = model_grad + sl.w;
    // dA [r, in] = s Bᵀ dW ; dB [out, r] = s dW Aᵀ
    ops::gemm<T>(true, false, r, sl.in, sl.out, s, values + sl.b, r, dW, sl.in, T(0),
                 grad + sl.a, sl.in);
    ops::gemm<T>(false, true, sl.out, r, sl.in, s, dW, sl.in, values + sl.a, sl.in, T(0),
                 grad + sl.b, r);
  }
  for (const auto& g : l.gates) std::copy_n(model_grad + g.model, l.heads, grad + g.adapter);
}

Model<float> lora_merge(const Model<float>& base, const LoraAdapter<float>& a) {
  Model<float> out;
  lora_apply(a.layout, a.values.data(), base, out);
  return out;
}

void save_lora(const LoraAdapter<float>& a, const std::string& dir,
               const std::string& base_model_path) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) throw Error("cannot create adapter directory " + dir);
  const LoraLayout& l = a.layout;
  std::vector<io::TensorView> views;
  for (const auto& s : l.slots) {
    const std::string pre = peft_prefix(s.layer) + s.module;
    views.push_back({pre + ".lora_A.weight", {l.config.rank, s.in}, a.values.data() + s.a});
    views.push_back({pre + ".lora_B.weight", {s.out, l.config.rank}, a.values.data() + s.b});
  }
  for (const auto& g : l.gates)
    views.push_back({peft_prefix(g.layer) + "beta", {l.heads}, a.values.data() + g.adapter});
  io::write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), views,
                        {{"format", "pt"}});
  nlohmann::json cfg = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model_path},
      {"r", l.config.rank},
      {"lora_alpha", l.config.alpha},
      {"lora_dropout", 0.0},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}},
      {"modules_to_save", nullptr},
      {"infini_trained_params", l.gates.empty() ? nlohmann::json::array() : nlohmann::json{"beta"}},
      {"infini_note",
       "The memory gates beta are trained alongside the adapters and stored as "
       "base_model.model.model.layers.{l}.self_attn.beta; merging replaces the base model's "
       "beta with them."}};
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), cfg.dump(2) + "\n");
}

LoraAdapter<float> load_lora(const std::string& dir, const Model<float>& base) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  std::ifstream f(cfg_path);
  if (!f) throw Error("cannot open " + cfg_path + " (not a LoRA adapter directory?)");
  std::stringstream ss;
  ss << f.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cfg_path + ": not valid JSON");
  if (j.value("peft_type", "") != "LORA") throw Error(cfg_path + ": peft_type is not \"LORA\"");
  if (!j.contains("r") || !j["r"].is_number_integer())
    throw Error(cfg_path + ": missing integer 'r'");
  if (!j.contains("lora_alpha") || !j["lora_alpha"].is_number())
    throw Error(cfg_path + ": missing number 'lora_alpha'");
  if (j.value("fan_in_fan_out", false)) throw Error(cfg_path + ": fan_in_fan_out is not supported");
  if (j.contains("target_modules")) {
    if (!j["target_modules"].is_array()) throw Error(cfg_path + ": target_modules must be a list");
    for (const auto& t : j["target_modules"]) {
      const std::string name = t.is_string() ? t.get<std::string>() : "";
      bool ok = false;
      for (const char* m : kModules) ok = ok || name == m;
      if (!ok) throw Error(cfg_path + ": unsupported target module " + t.dump());
    }
  }
  LoraConfig c{j["r"].get<int64_t>(), j["lora_alpha"].get<double>()};
  LoraAdapter<float> a;
  a.layout = LoraLayout::build(base.config, base.layout, c);
  a.values.assign(size_t(a.layout.total), 0.0f);
  const std::string st_path = (fs::path(dir) / "adapter_model.safetensors").string();
  auto file = io::SafetensorsFile::open(st_path);
  auto read = [&](const std::string& name, std::vector<int64_t> shape, float* dst, bool required) {
    const io::TensorInfo* t = file->find(name);
    if (!t) {
      if (required) throw Error(st_path + ": tensor '" + name + "' is missing");
      return false;
    }
    if (t->shape != shape) {
      std::string want, got;
      for (auto v : shape) want += (want.empty() ? "" : ",") + std::to_string(v);
      for (auto v : t->shape) got += (got.empty() ? "" : ",") + std::to_string(v);
      throw Error(st_path + ": tensor '" + name + "' has shape [" + got + "], the model needs [" +
                  want + "]");
    }
    const int64_t n = t->numel();
    for (int64_t i = 0; i < n; ++i) {
      float v;
      if (t->dtype == io::DType::F32) {
        std::memcpy(&v, t->data + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t->data + 2 * i, 2);
        v = t->dtype == io::DType::BF16 ? io::bf16_to_f32(h) : io::f16_to_f32(h);
      }
      if (!std::isfinite(v)) throw Error(st_path + ": tensor '" + name + "' has a non-finite value");
      dst[i] = v;
    }
    return true;
  };
  const std::vector<std::string> targets =
      j.contains("target_modules") ? j["target_modules"].get<std::vector<std::string>>()
                                   : std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"};
  for (const auto& s : a.layout.slots) {
    // A module PEFT did not adapt keeps A = B = 0 (no change).
    if (std::find(targets.begin(), targets.end(), s.module) == targets.end()) continue;
    const std::string pre = peft_prefix(s.layer) + s.module;
    read(pre + ".lora_A.weight", {c.rank, s.in}, a.values.data() + s.a, true);
    read(pre + ".lora_B.weight", {s.out, c.rank}, a.values.data() + s.b, true);
  }
  for (const auto& g : a.layout.gates)
    if (!read(peft_prefix(g.layer) + "beta", {a.layout.heads}, a.values.data() + g.adapter, false))
      std::copy_n(base.weights.data() + g.model, a.layout.heads, a.values.data() + g.adapter);
  return a;
}

#define INFINI_INSTANTIATE(T)                                                               \
  template void lora_apply<T>(const LoraLayout&, const T*, const Model<T>&, Model<T>&);     \
  template void lora_map_gradient<T>(const LoraLayout&, const T*, const T*, T*);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::model
