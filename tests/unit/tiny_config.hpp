#pragma once
// The tiny model the model, LoRA and MoE-CT tests share: every feature on (GQA, sinks, a sliding
// layer, YaRN, active clamps, both router losses), small enough for finite differences in double.
#include "model/config.hpp"

namespace moelab::test {

inline ModelConfig tiny(bool moe) {
  ModelConfig c;
  c.vocab_size = 29;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;
  c.intermediate_size = 8;
  c.ffn_type = moe ? FfnKind::Moe : FfnKind::Dense;
  c.num_local_experts = moe ? 4 : 1;
  c.num_experts_per_tok = moe ? 2 : 1;
  c.sliding_window = 4;
  c.layer_sliding = {true, false};
  c.attention_sinks = true;
  c.max_position_embeddings = 64;
  c.yarn_factor = 4.0;
  c.yarn_original_context = 8;
  c.swiglu_limit = 1.5;  // small, so that the clamps are active in a tiny model
  c.router_aux_loss_coef = 0.05;
  c.router_z_loss_coef = 0.01;
  c.initializer_range = 0.3;
  return c;
}

// The inference tests' model (generation, the server): a vocabulary of 61 ids, 64 positions, one
// sliding layer; large initial weights, so that greedy choices are far from ties.
inline ModelConfig tiny_lm(bool moe) {
  ModelConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 24;
  c.ffn_type = moe ? FfnKind::Moe : FfnKind::Dense;
  c.num_local_experts = moe ? 4 : 1;
  c.num_experts_per_tok = moe ? 2 : 1;
  c.sliding_window = 5;
  c.layer_sliding = {true, false};
  c.max_position_embeddings = 64;
  c.initializer_range = 0.2;
  return c;
}

}  // namespace moelab::test
