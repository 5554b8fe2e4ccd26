#include "model/lora.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/text.hpp"
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
  require_float_weights(base, "applying a LoRA adapter");
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

namespace {

// A JSON value of adapter_config.json for messages: short, on one line.
std::string short_dump(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 60) + "..." : s;
}

constexpr int64_t kMaxLoraRank = 65536;

}  // namespace

LoraAdapter<float> load_lora(const std::string& dir, const Model<float>& base) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  std::string text;
  try {
    text = io::read_file(cfg_path);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (not a LoRA adapter directory?)");
  }
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cfg_path + ": not a JSON object");
  auto fail = [&](const std::string& msg) { throw Error(cfg_path + ": " + msg); };
  auto get = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  // Keys whose values change what the adapter computes: anything but the plain LoRA of
  // W += (alpha/r)·B·A on q/k/v/o is refused rather than merged wrongly.
  const nlohmann::json* pt = get("peft_type");
  if (!pt || !pt->is_string() || *pt != "LORA")
    fail("peft_type is " + (pt ? short_dump(*pt) : std::string("missing")) + ", not \"LORA\"");
  const nlohmann::json* r = get("r");
  if (!r) fail("missing integer 'r'");
  if (!r->is_number_integer()) fail("'r' = " + short_dump(*r) + " must be an integer");
  const bool in_range =
      r->is_number_unsigned()
          ? r->get<uint64_t>() >= 1 && r->get<uint64_t>() <= uint64_t(kMaxLoraRank)
          : r->get<int64_t>() >= 1 && r->get<int64_t>() <= kMaxLoraRank;
  if (!in_range)
    fail("'r' = " + short_dump(*r) + " is out of range [1, " + std::to_string(kMaxLoraRank) + "]");
  const nlohmann::json* al = get("lora_alpha");
  if (!al || !al->is_number()) fail("missing number 'lora_alpha'");
  const double alpha = al->get<double>();
  if (!std::isfinite(alpha) || !(alpha > 0))
    fail("'lora_alpha' = " + short_dump(*al) + " must be a positive finite number");
  for (const char* key : {"fan_in_fan_out", "use_rslora", "use_dora"}) {
    const nlohmann::json* v = get(key);
    if (v && !v->is_boolean()) fail(std::string("'") + key + "' must be true or false");
    if (v && v->get<bool>()) fail(std::string(key) + " is not supported");
  }
  if (const nlohmann::json* b = get("bias"); b && (!b->is_string() || *b != "none"))
    fail("bias " + short_dump(*b) + " is not supported (only \"none\")");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (const nlohmann::json* v = get(key); v && !(v->is_object() && v->empty()))
      fail(std::string(key) + " is not supported (one rank and alpha for every module)");
  std::vector<std::string> targets{"q_proj", "k_proj", "v_proj", "o_proj"};
  if (j.contains("target_modules")) {
    const nlohmann::json& tm = j["target_modules"];
    if (!tm.is_array()) fail("target_modules must be a list");
    targets.clear();
    for (const auto& t : tm) {
      const std::string name = t.is_string() ? t.get<std::string>() : "";
      bool ok = false;
      for (const char* m : kModules) ok = ok || name == m;
      if (!ok)
        fail("unsupported target module " + short_dump(t) +
             " (supported: q_proj, k_proj, v_proj, o_proj)");
      targets.push_back(name);
    }
  }
  const LoraConfig c{r->get<int64_t>(), alpha};
  const LoraLayout layout = LoraLayout::build(base.config, base.layout, c);

  const std::string st_path = (fs::path(dir) / "adapter_model.safetensors").string();
  auto file = io::SafetensorsFile::open(st_path);
  // Every tensor is checked against the model before anything is allocated, and every tensor
  // of the file must be one of the adapter's: a stray one means the adapter is not what
  // adapter_config.json says (other modules, layers or a DoRA/bias extension).
  struct Want {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset;
    bool required;
  };
  std::vector<Want> want;
  for (const auto& s : layout.slots) {
    // A module PEFT did not adapt keeps A = B = 0 (no change).
    if (std::find(targets.begin(), targets.end(), s.module) == targets.end()) continue;
    const std::string pre = peft_prefix(s.layer) + s.module;
    want.push_back({pre + ".lora_A.weight", {c.rank, s.in}, s.a, true});
    want.push_back({pre + ".lora_B.weight", {s.out, c.rank}, s.b, true});
  }
  for (const auto& g : layout.gates)
    want.push_back({peft_prefix(g.layer) + "beta", {layout.heads}, g.adapter, false});
  auto shape_text = [](const std::vector<int64_t>& shape) {
    std::string t;
    for (auto v : shape) t += (t.empty() ? "" : ",") + std::to_string(v);
    return "[" + t + "]";
  };
  std::set<std::string> known;
  for (const Want& w : want) {
    known.insert(w.name);
    const io::TensorInfo* t = file->find(w.name);
    if (!t) {
      if (w.required) throw Error(st_path + ": tensor '" + w.name + "' is missing");
      continue;
    }
    if (t->shape != w.shape)
      throw Error(st_path + ": tensor '" + w.name + "' has shape " + shape_text(t->shape) +
                  ", the model needs " + shape_text(w.shape));
  }
  for (const io::TensorInfo& t : file->tensors())
    if (!known.count(t.name)) {
      std::string name = t.name.substr(0, 200);
      for (char& ch : name)
        if (static_cast<unsigned char>(ch) < 0x20) ch = '?';
      throw Error(st_path + ": unexpected tensor '" + name +
                  "' (not a lora_A/lora_B of the target_modules or a gate beta of this model)");
    }

  LoraAdapter<float> a;
  a.layout = layout;
  a.values.assign(size_t(a.layout.total), 0.0f);
  for (const Want& w : want) {
    const io::TensorInfo* t = file->find(w.name);
    if (!t) continue;
    float* dst = a.values.data() + w.offset;
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
      if (!std::isfinite(v))
        throw Error(st_path + ": tensor '" + w.name + "' has a non-finite value");
      dst[i] = v;
    }
  }
  for (const auto& g : a.layout.gates)
    if (!file->find(peft_prefix(g.layer) + "beta"))
      std::copy_n(base.weights.data() + g.model, a.layout.heads, a.values.data() + g.adapter);
  // Finite factors can still overflow once multiplied and scaled (a huge lora_alpha): the
  // merged matrices must be finite, as load_model requires of any model.
  std::vector<float> merged;
  const float scale = float(a.layout.scale());
  for (const auto& s : a.layout.slots) {
    if (std::find(targets.begin(), targets.end(), s.module) == targets.end()) continue;
    merged.assign(base.weights.begin() + s.w, base.weights.begin() + s.w + s.out * s.in);
    ops::gemm<float>(false, false, s.out, s.in, c.rank, scale, a.values.data() + s.b, c.rank,
                     a.values.data() + s.a, s.in, 1.0f, merged.data(), s.in);
    for (float v : merged)
      if (!std::isfinite(v)) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", a.layout.scale());
        throw Error(dir + ": merging gives a non-finite weight in layer " +
                    std::to_string(s.layer) + " " + s.module + " (lora_alpha/r = " + buf +
                    " is too large for these factors)");
      }
  }
  return a;
}

#define INFINI_INSTANTIATE(T)                                                               \
  template void lora_apply<T>(const LoraLayout&, const T*, const Model<T>&, Model<T>&);     \
  template void lora_map_gradient<T>(const LoraLayout&, const T*, const T*, T*);
INFINI_INSTANTIATE(float)
INFINI_INSTANTIATE(double)
#undef INFINI_INSTANTIATE

}  // namespace infini::model
