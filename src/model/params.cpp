#include "model/params.hpp"

#include <map>
#include <set>

namespace infini::model {

ParamLayout ParamLayout::build(const ModelConfig& c) {
  ParamLayout p;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, ParamKind kind) {
    ParamInfo info;
    info.name = name;
    info.numel = 1;
    for (int64_t s : shape) info.numel *= s;
    info.shape = std::move(shape);
    info.offset = p.total;
    info.kind = kind;
    p.total += info.numel;
    p.params.push_back(std::move(info));
    return p.params.back().offset;
  };
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  p.embed = add("model.embed_tokens.weight", {c.vocab_size, D}, ParamKind::Embedding);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.in_norm = add(pre + "input_layernorm.weight", {D}, ParamKind::Norm);
    o.wq = add(pre + "self_attn.q_proj.weight", {c.q_width(), D}, ParamKind::Matrix);
    if (c.attention_bias) o.bq = add(pre + "self_attn.q_proj.bias", {c.q_width()}, ParamKind::Bias);
    o.wk = add(pre + "self_attn.k_proj.weight", {c.kv_width(), D}, ParamKind::Matrix);
    if (c.attention_bias)
      o.bk = add(pre + "self_attn.k_proj.bias", {c.kv_width()}, ParamKind::Bias);
    o.wv = add(pre + "self_attn.v_proj.weight", {c.kv_width(), D}, ParamKind::Matrix);
    if (c.attention_bias)
      o.bv = add(pre + "self_attn.v_proj.bias", {c.kv_width()}, ParamKind::Bias);
    o.wo = add(pre + "self_attn.o_proj.weight", {D, c.q_width()}, ParamKind::Matrix);
    if (c.use_memory) o.beta = add(pre + "self_attn.beta", {c.num_heads}, ParamKind::Gate);
    o.post_norm = add(pre + "post_attention_layernorm.weight", {D}, ParamKind::Norm);
    if (c.is_sparse_layer(l)) {
      // Hugging Face's module order (Qwen2MoeSparseMoeBlock): router, experts 0..E-1 (gate,
      // up, down each), shared expert (gate, up, down), shared expert gate.
      const std::string mlp = pre + "mlp.";
      const int64_t E = c.num_experts, Fm = c.moe_intermediate_size,
                    Fs = c.shared_expert_intermediate_size;
      o.sparse = true;
      o.router = add(mlp + "gate.weight", {E, D}, ParamKind::Router);
      o.experts.resize(size_t(E));
      for (int64_t e = 0; e < E; ++e) {
        const std::string ex = mlp + "experts." + std::to_string(e) + ".";
        auto& x = o.experts[size_t(e)];
        x.w_gate = add(ex + "gate_proj.weight", {Fm, D}, ParamKind::Matrix);
        x.w_up = add(ex + "up_proj.weight", {Fm, D}, ParamKind::Matrix);
        x.w_down = add(ex + "down_proj.weight", {D, Fm}, ParamKind::Matrix);
      }
      o.shared.w_gate = add(mlp + "shared_expert.gate_proj.weight", {Fs, D}, ParamKind::Matrix);
      o.shared.w_up = add(mlp + "shared_expert.up_proj.weight", {Fs, D}, ParamKind::Matrix);
      o.shared.w_down = add(mlp + "shared_expert.down_proj.weight", {D, Fs}, ParamKind::Matrix);
      o.shared_gate = add(mlp + "shared_expert_gate.weight", {1, D}, ParamKind::Router);
    } else {
      o.w_gate = add(pre + "mlp.gate_proj.weight", {F, D}, ParamKind::Matrix);
      o.w_up = add(pre + "mlp.up_proj.weight", {F, D}, ParamKind::Matrix);
      o.w_down = add(pre + "mlp.down_proj.weight", {D, F}, ParamKind::Matrix);
    }
    p.layers.push_back(std::move(o));
  }
  p.final_norm = add("model.norm.weight", {D}, ParamKind::Norm);
  p.lm_head = c.tie_word_embeddings ? p.embed
                                    : add("lm_head.weight", {c.vocab_size, D}, ParamKind::Matrix);
  return p;
}

ParamLayout ParamLayout::with_last(const std::vector<int64_t>& apart, int64_t& kept) const {
  const std::set<int64_t> last(apart.begin(), apart.end());
  std::map<int64_t, int64_t> moved;  // old offset -> new offset
  ParamLayout out = *this;
  int64_t at = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (ParamInfo& p : out.params) {
      if (last.count(p.offset) != size_t(pass)) continue;
      moved[p.offset] = at;
      at += p.numel;
    }
    if (pass == 0) kept = at;
  }
  for (ParamInfo& p : out.params) p.offset = moved.at(p.offset);
  auto remap = [&](int64_t& o) {
    if (o >= 0) o = moved.at(o);
  };
  remap(out.embed);
  remap(out.final_norm);
  remap(out.lm_head);
  for (LayerOffsets& l : out.layers) {
    for (int64_t* o : {&l.in_norm, &l.wq, &l.bq, &l.wk, &l.bk, &l.wv, &l.bv, &l.wo, &l.beta,
                       &l.post_norm, &l.w_gate, &l.w_up, &l.w_down, &l.router, &l.shared_gate,
                       &l.shared.w_gate, &l.shared.w_up, &l.shared.w_down})
      remap(*o);
    for (auto& e : l.experts)
      for (int64_t* o : {&e.w_gate, &e.w_up, &e.w_down}) remap(*o);
  }
  return out;
}

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const auto& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

}  // namespace infini::model
