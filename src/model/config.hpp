#pragma once
// Model configuration: JSON with Hugging Face GptOss key names where one exists, validated with
// one clear error per problem, and the parameter / FLOPs accounting of docs/methods.md §4.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moelab {

// What a layer's feed-forward block computes, the one switch for it (ffn_kind): dense, a routed
// mixture of experts, or MoE-CT (the layer's frozen FFN beside new experts, fused by a gate). A
// one-expert MoE keeps its router tensors (as in Hugging Face files) but computes as dense: its
// router has one choice, of weight 1.
enum class FfnKind { Dense, Moe, MoeCt };

// Low-rank adapters on linear maps (docs/methods.md §3.11): W x + (alpha / rank) B A x, B = 0 at
// the start. Targets are regexes on the weight names (e.g. "self_attn\\.(q|v)_proj",
// "mlp\\.experts").
struct LoraConfig {
  int64_t rank = 0;  // 0: no adapters
  double alpha = 0;  // 0: alpha = rank (scale 1)
  std::vector<std::string> targets;
  double scale() const { return alpha > 0 ? alpha / double(rank) : 1.0; }
};

// MoE-CT (docs/methods.md §3.12): in the listed layers (empty: all), N new experts with their own
// top-k router beside the layer's FFN, out = h + (1 - a) FFN(u) + a MoE(u), a from the gate.
enum class CtGate { Fixed, Scalar, Token };
struct MoeCtConfig {
  int64_t experts = 0;  // N; 0: no MoE-CT
  int64_t top_k = 1;
  CtGate gate = CtGate::Token;
  double lambda = 0.5;  // fixed: a; scalar: a at the start; token: sigmoid(b) at the start (w = 0)
  bool copy = true;  // new experts start as copies of the layer's FFN ("init": "copy"), or random
  std::vector<int64_t> layers;
  bool on(int64_t layer) const;
};

// DeRS (docs/methods.md §3.13): every routed expert's matrices stored as one shared base plus a
// light per-expert delta, W_e = W_base + delta_e: a sparse delta (values at fixed positions,
// (1 - p) of the matrix), a low-rank one (scale * B_e A_e, B = 0 at the start) or a k-bit one
// (per-output-channel scale times integer codes). Sparse and low-rank deltas train; the base
// trains too unless frozen.
enum class DeltaKind { None, Sparse, LowRank, Quant };
struct DersConfig {
  DeltaKind delta = DeltaKind::None;
  double p = 0.9;     // sparse: the share of each delta dropped
  bool topk = false;  // sparse: positions kept by magnitude (compress) rather than at random
  uint64_t seed = 0;  // sparse: the random positions of a fresh model
  int64_t rank = 4;   // low-rank
  double alpha = 0;   // low-rank: scale alpha / rank; 0: scale 1
  int64_t bits = 4;   // quant: 1..8
  std::string base = "shared";  // what the base is: "shared" (trained), "dense" or "mean"
  bool on() const { return delta != DeltaKind::None; }
  double scale() const { return alpha > 0 ? alpha / double(rank) : 1.0; }
  // kept positions of an [in, out] delta (sparse)
  int64_t nnz(int64_t n) const;
};

// Auxiliary-loss-free load balancing (docs/methods.md §3.7.1): a per-layer, per-expert bias on
// the router logits for the top-k choice only, moved after each optimizer step by bias_rate
// towards the experts that got less than their fair share of the step's assignments.
struct RouterBalanceConfig {
  double bias_rate = 0;  // 0: off (no balance_bias tensors at all)
  bool on() const { return bias_rate > 0; }
};

// The command-line spelling of a delta: "none", "sparse:P", "lowrank:R" or "quant:BITS".
// ders_parse_spelling sets d.delta and its number (ranges unchecked: the caller's flag says
// what it accepts); false when s is none of these.
bool ders_parse_spelling(std::string_view s, DersConfig& d);
std::string ders_spelling(const DersConfig& d);

struct ModelConfig {
  int64_t vocab_size = 8192;
  int64_t hidden_size = 256;        // d
  int64_t num_hidden_layers = 4;    // L
  int64_t num_attention_heads = 4;  // H
  int64_t num_key_value_heads = 4;  // KV
  int64_t head_dim = 64;
  FfnKind ffn_type = FfnKind::Dense;  // as the file says ("ffn_type"); compute: ffn_kind()
  int64_t num_local_experts = 1;      // E
  int64_t num_experts_per_tok = 1;    // k
  int64_t intermediate_size = 1024;   // hidden width of one expert
  int64_t sliding_window = 0;         // 0: no sliding layers
  std::vector<bool> layer_sliding;    // per layer: sliding window (true) or full causal (false)
  bool attention_sinks = true;
  bool attention_bias = true;
  double rope_theta = 150000.0;
  double yarn_factor = 1.0;  // rope_scaling.factor; 1 = plain RoPE
  double yarn_beta_fast = 32.0;
  double yarn_beta_slow = 1.0;
  int64_t yarn_original_context = 4096;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-5;
  double swiglu_limit = 7.0;  // <= 0 disables the clamps
  double swiglu_alpha = 1.702;
  double router_aux_loss_coef = 0.01;
  double router_z_loss_coef = 0.001;
  RouterBalanceConfig router_balance;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  std::vector<int64_t> moe_layers;  // the layers with routed experts (empty: all); others dense
  LoraConfig lora;
  MoeCtConfig moe_ct;
  DersConfig ders;

  bool is_moe() const { return ffn_type == FfnKind::Moe; }
  // Layer l routes among num_local_experts (an MoE config's layer not in moe_layers is dense).
  bool moe_at(int64_t layer) const;
  // The config one layer's FFN computes with: E = 1, k = 1, dense, where the layer is not MoE.
  ModelConfig layer_config(int64_t layer) const;
};

// Parses and validates; `source` (a file name) starts every error message.
ModelConfig config_from_json(const nlohmann::json& j, std::string_view source);
nlohmann::json config_to_json(const ModelConfig& c);
// Reads a model config file; a file with a "model" object (bench and experiment files) uses it.
ModelConfig config_load(const std::string& path);
void config_validate(const ModelConfig& c, std::string_view source);

// N = int64_t for the counts; N = double where a config is checked before its counts can be
// trusted not to overflow.
template <typename N>
struct ParamCountsOf {
  N total = 0;
  N embedding = 0;    // input embedding
  N unembedding = 0;  // output head (0 extra when tied)
  N attention = 0;    // all layers
  N router = 0;       // all layers
  N experts = 0;      // all layers, all experts
  N per_expert = 0;   // one expert of one layer
  N norms = 0;
  N active = 0;  // per token: excludes the input embedding and unselected experts
};
using ParamCounts = ParamCountsOf<int64_t>;
template <typename N>
ParamCountsOf<N> config_count_as(const ModelConfig& c);
inline ParamCounts config_count(const ModelConfig& c) {
  return config_count_as<int64_t>(c);
}

struct FlopCounts {
  double train_per_token = 0;   // 6 x active matmul params + causal attention (exact average)
  double spec52_per_token = 0;  // Abnar et al. App. C formula at n_ctx = seq (methods.md §4.3)
  double six_na = 0;            // 6 x active params
  // train_per_token's forward part by what computes it, named as the profile's scopes ("qkv
  // proj", "out proj", "router", "expert gemm", "lm head", "attention"); the backward of each
  // is twice its forward.
  std::vector<std::pair<std::string, double>> forward_parts;
};
FlopCounts config_flops(const ModelConfig& c, int64_t seq_len);

// The iso-total-parameter MoE variant of a dense config (methods.md §4.5): the FFN width is split
// across E experts, k of them active per token.
ModelConfig config_iso_moe(const ModelConfig& dense, int64_t E, int64_t k);

}  // namespace moelab
