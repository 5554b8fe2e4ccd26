#include "model/params.hpp"

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
    o.w_gate = add(pre + "mlp.gate_proj.weight", {F, D}, ParamKind::Matrix);
    o.w_up = add(pre + "mlp.up_proj.weight", {F, D}, ParamKind::Matrix);
    o.w_down = add(pre + "mlp.down_proj.weight", {D, F}, ParamKind::Matrix);
    p.layers.push_back(o);
  }
  p.final_norm = add("model.norm.weight", {D}, ParamKind::Norm);
  p.lm_head = c.tie_word_embeddings ? p.embed
                                    : add("lm_head.weight", {c.vocab_size, D}, ParamKind::Matrix);
  return p;
}

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const auto& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

}  // namespace infini::model
