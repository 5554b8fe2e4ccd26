#include "train/optimizer.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.hpp"
#include "io/safetensors.hpp"

namespace infini::train {

std::vector<ParamGroup> model_param_groups(const model::ParamLayout& layout, double lr,
                                           double gate_lr, double weight_decay) {
  ParamGroup mat{"matrices", {}, lr, weight_decay};
  ParamGroup norm{"norms", {}, lr, 0.0};
  ParamGroup gate{"gates", {}, gate_lr, 0.0};
  ParamGroup router{"routers", {}, lr, weight_decay};
  for (const auto& p : layout.params) {
    switch (p.kind) {
      case model::ParamKind::Embedding:
      case model::ParamKind::Matrix:
        mat.ranges.push_back({p.offset, p.numel});
        break;
      case model::ParamKind::Norm:
      case model::ParamKind::Bias:
        norm.ranges.push_back({p.offset, p.numel});
        break;
      case model::ParamKind::Gate:
        gate.ranges.push_back({p.offset, p.numel});
        break;
      case model::ParamKind::Router:
        router.ranges.push_back({p.offset, p.numel});
        break;
    }
  }
  std::vector<ParamGroup> out;
  for (auto* g : {&mat, &norm, &gate, &router})
    if (!g->ranges.empty()) out.push_back(std::move(*g));
  return out;
}

AdamW::AdamW(int64_t size, std::vector<ParamGroup> groups, AdamWOptions opts)
    : size_(size), groups_(std::move(groups)), opts_(opts) {
  if (size < 0) throw Error("AdamW: negative size");
  if (!(opts.beta1 >= 0 && opts.beta1 < 1) || !(opts.beta2 >= 0 && opts.beta2 < 1) ||
      !(opts.eps > 0))
    throw Error("AdamW: betas must be in [0, 1) and eps > 0");
  std::vector<std::pair<int64_t, int64_t>> all;
  for (const auto& g : groups_) {
    if (!(g.lr >= 0) || !(g.weight_decay >= 0) || !std::isfinite(g.lr))
      throw Error("AdamW: group '" + g.name + "' has a negative or non-finite lr/weight decay");
    for (const auto& r : g.ranges) {
      if (r.offset < 0 || r.count < 0 || r.offset + r.count > size)
        throw Error("AdamW: group '" + g.name + "' has a range outside the buffer");
      all.push_back({r.offset, r.offset + r.count});
    }
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 1; i < all.size(); ++i)
    if (all[i].first < all[i - 1].second) throw Error("AdamW: parameter groups overlap");
  m_.assign(size_t(size), 0.0f);
  v_.assign(size_t(size), 0.0f);
}

void AdamW::step(float* params, const float* grads, double lr_factor) {
  ++t_;
  const double b1 = opts_.beta1, b2 = opts_.beta2;
  const double bc1 = 1.0 - std::pow(b1, double(t_)), bc2 = 1.0 - std::pow(b2, double(t_));
  // One parallel region for all ranges (a model has dozens; waking the threads for each cost
  // more than the small ones' work), no barrier between them. Element-wise, so any thread
  // split gives the same bits.
#pragma omp parallel if (size_ > 65536)
  for (const auto& g : groups_) {
    const float decay = float(1.0 - g.lr * lr_factor * g.weight_decay);
    const float step_size = float(g.lr * lr_factor / bc1);
    const float inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
    const float eps = float(opts_.eps), fb1 = float(b1), fb2 = float(b2);
    for (const auto& r : g.ranges) {
      float* p = params + r.offset;
      const float* gr = grads + r.offset;
      float* m = m_.data() + r.offset;
      float* v = v_.data() + r.offset;
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < r.count; ++i) {
        m[i] = fb1 * m[i] + (1.0f - fb1) * gr[i];
        v[i] = fb2 * v[i] + (1.0f - fb2) * gr[i] * gr[i];
        p[i] *= decay;
        p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
    }
  }
}

std::string AdamW::layout_signature() const {
  std::string s = "size=" + std::to_string(size_);
  for (const auto& g : groups_) {
    s += ";" + g.name + ":";
    for (const auto& r : g.ranges)
      s += std::to_string(r.offset) + "+" + std::to_string(r.count) + ",";
  }
  return s;
}

void AdamW::save(const std::string& path) const {
  io::write_safetensors(
      path, {{"exp_avg", {size_}, m_.data()}, {"exp_avg_sq", {size_}, v_.data()}},
      {{"format", "infini-adamw"}, {"step", std::to_string(t_)}, {"layout", layout_signature()}});
}

void AdamW::load(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  const auto& md = f->metadata();
  auto get = [&](const char* k) {
    auto it = md.find(k);
    if (it == md.end()) throw Error(path + ": optimizer metadata '" + k + "' is missing");
    return it->second;
  };
  if (get("format") != "infini-adamw") throw Error(path + " is not an infini optimizer state");
  if (get("layout") != layout_signature())
    throw Error(path + ": optimizer state was written for other parameters or groups");
  const std::string step = get("step");
  char* end = nullptr;
  errno = 0;
  const long long t = std::strtoll(step.c_str(), &end, 10);
  if (step.empty() || end != step.c_str() + step.size() || errno == ERANGE || t < 0 ||
      t > (1ll << 50))
    throw Error(path + ": optimizer metadata 'step' is not a step count");
  std::vector<float> m(static_cast<size_t>(size_)), v(static_cast<size_t>(size_));
  for (auto [name, dst] : {std::pair{"exp_avg", &m}, std::pair{"exp_avg_sq", &v}}) {
    const io::TensorInfo* ti = f->find(name);
    if (!ti || ti->dtype != io::DType::F32 || ti->numel() != size_)
      throw Error(path + ": tensor '" + name + "' is missing or has the wrong size/dtype");
    if (size_ > 0) std::memcpy(dst->data(), ti->data, size_t(size_) * sizeof(float));
  }
  // A corrupt moment would only show later as a non-finite weight: reject it here.
  for (int64_t i = 0; i < size_; ++i) {
    if (!std::isfinite(m[size_t(i)]))
      throw Error(path + ": tensor 'exp_avg' contains a non-finite value");
    if (!std::isfinite(v[size_t(i)]) || v[size_t(i)] < 0)
      throw Error(path + ": tensor 'exp_avg_sq' contains a negative or non-finite value");
  }
  m_ = std::move(m);
  v_ = std::move(v);
  t_ = t;
}

double global_norm(const float* g, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(g[i]) * double(g[i]);
  return std::sqrt(s);
}

double clip_global_norm(float* g, int64_t n, double max_norm) {
  const double norm = global_norm(g, n);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float s = float(max_norm / (norm + 1e-6));
    for (int64_t i = 0; i < n; ++i) g[i] *= s;
  }
  return norm;
}

const char* schedule_name(ScheduleKind k) {
  return k == ScheduleKind::Cosine ? "cosine" : "constant";
}

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "cosine") return ScheduleKind::Cosine;
  if (name == "constant") return ScheduleKind::Constant;
  throw Error("--schedule must be 'cosine' or 'constant', not '" + name + "'");
}

double Schedule::factor(int64_t step) const {
  if (step < warmup) return double(step + 1) / double(warmup);
  if (kind == ScheduleKind::Constant) return 1.0;
  const double span = double(std::max<int64_t>(1, total_steps - warmup));
  const double p = std::min(1.0, double(step - warmup) / span);
  return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace infini::train
