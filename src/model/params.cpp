#include "model/params.hpp"

#include <fmt/format.h>

#include <regex>

#include "core/error.hpp"

namespace moelab {

namespace {

struct Builder {
  ParamLayout& p;
  int64_t add(std::string name, std::vector<int64_t> shape, Init init, bool decay) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    p.tensors.push_back({std::move(name), std::move(shape), p.total, n, init, decay, false});
    const int64_t off = p.total;
    p.total += n;
    return off;
  }
};

}  // namespace

ParamLayout layout_build(const ModelConfig& c) {
  ParamLayout p;
  Builder b{p};
  const int64_t d = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t hd = c.head_dim, E = c.num_local_experts, I = c.intermediate_size;
  p.embed = b.add("model.embed_tokens.weight", {c.vocab_size, d}, Init::Normal, true);
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const std::string pre = fmt::format("model.layers.{}.", l);
    LayerOffsets o{};
    o.ln1 = b.add(pre + "input_layernorm.weight", {d}, Init::Ones, false);
    // q, k and v weights (then biases) are adjacent: one [(H+2KV)*hd, d] matrix, one GEMM.
    o.qkv_w = b.add(pre + "self_attn.q_proj.weight", {H * hd, d}, Init::Normal, true);
    b.add(pre + "self_attn.k_proj.weight", {KV * hd, d}, Init::Normal, true);
    b.add(pre + "self_attn.v_proj.weight", {KV * hd, d}, Init::Normal, true);
    o.qkv_b = -1;
    if (c.attention_bias) {
      o.qkv_b = b.add(pre + "self_attn.q_proj.bias", {H * hd}, Init::Zeros, false);
      b.add(pre + "self_attn.k_proj.bias", {KV * hd}, Init::Zeros, false);
      b.add(pre + "self_attn.v_proj.bias", {KV * hd}, Init::Zeros, false);
    }
    o.o_w = b.add(pre + "self_attn.o_proj.weight", {d, H * hd}, Init::NormalScaled, true);
    o.o_b = c.attention_bias ? b.add(pre + "self_attn.o_proj.bias", {d}, Init::Zeros, false) : -1;
    o.sinks = c.attention_sinks ? b.add(pre + "self_attn.sinks", {H}, Init::Zeros, false) : -1;
    o.ln2 = b.add(pre + "post_attention_layernorm.weight", {d}, Init::Ones, false);
    o.router_w = o.router_b = -1;
    if (c.is_moe()) {
      o.router_w = b.add(pre + "mlp.router.weight", {E, d}, Init::Normal, true);
      o.router_b = b.add(pre + "mlp.router.bias", {E}, Init::Zeros, false);
    }
    o.w1 = b.add(pre + "mlp.experts.gate_up_proj", {E, d, 2 * I}, Init::Normal, true);
    o.b1 = b.add(pre + "mlp.experts.gate_up_proj_bias", {E, 2 * I}, Init::Zeros, false);
    o.w2 = b.add(pre + "mlp.experts.down_proj", {E, I, d}, Init::NormalScaled, true);
    o.b2 = b.add(pre + "mlp.experts.down_proj_bias", {E, d}, Init::Zeros, false);
    p.layers.push_back(o);
  }
  p.norm = b.add("model.norm.weight", {d}, Init::Ones, false);
  p.lm_head = c.tie_word_embeddings
                  ? p.embed
                  : b.add("lm_head.weight", {c.vocab_size, d}, Init::Normal, true);
  return p;
}

const TensorView* ParamLayout::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

int64_t ParamLayout::set_frozen(const std::string& pattern, bool frozen) {
  std::regex re;
  try {
    re = std::regex(pattern);
  } catch (const std::regex_error&) {
    fail(fmt::format("freeze pattern '{}': not a valid regular expression", pattern));
  }
  int64_t n = 0;
  for (auto& t : tensors)
    if (std::regex_search(t.name, re)) {
      t.frozen = frozen;
      n++;
    }
  return n;
}

bool ParamLayout::frozen_range(int64_t begin, int64_t n) const {
  for (const auto& t : tensors)
    if (t.offset < begin + n && t.offset + t.numel > begin && !t.frozen) return false;
  return true;
}

}  // namespace moelab
