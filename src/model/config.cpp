#include "model/config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.hpp"
#include "core/parse.hpp"

namespace moelab {

namespace {

using json = nlohmann::json;

// Keys of a Hugging Face GptOss config.json that do not change the computation here.
const std::set<std::string> kIgnoredKeys = {
    "architectures", "model_type",        "torch_dtype",          "transformers_version",
    "eos_token_id",  "pad_token_id",      "bos_token_id",         "hidden_act",
    "use_cache",     "attention_dropout", "output_router_logits", "initial_context_length"};

struct Reader {
  const json& j;
  std::string_view src;

  [[noreturn]] void bad(std::string_view key, std::string_view what) const {
    fail(fmt::format("{}: '{}' {}", src, key, what));
  }
  int64_t integer(const std::string& key) const {
    const json& v = j.at(key);
    if (!v.is_number_integer()) bad(key, "must be an integer");
    // Above INT64_MAX the value would wrap to a negative one and be reported as such.
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) bad(key, "is too large");
    return v.get<int64_t>();
  }
  double number(const std::string& key) const {
    const json& v = j.at(key);
    if (!v.is_number()) bad(key, "must be a number");
    return v.get<double>();
  }
  bool boolean(const std::string& key) const {
    const json& v = j.at(key);
    if (!v.is_boolean()) bad(key, "must be true or false");
    return v.get<bool>();
  }
  std::string string(const std::string& key) const {
    const json& v = j.at(key);
    if (!v.is_string()) bad(key, "must be a string");
    return v.get<std::string>();
  }
};

void parse_lora(ModelConfig& c, const json& v, std::string_view src) {
  if (v.is_null()) return;
  if (!v.is_object()) fail(fmt::format("{}: 'lora' must be an object or null", src));
  const std::string sub = fmt::format("{}: lora", src);
  Reader r{v, sub};
  for (auto& [key, t] : v.items()) {
    if (key == "rank")
      c.lora.rank = r.integer(key);
    else if (key == "alpha")
      c.lora.alpha = r.number(key);
    else if (key == "targets") {
      if (!t.is_array()) r.bad(key, "must be an array of regular expressions");
      c.lora.targets.clear();
      for (const json& e : t) {
        if (!e.is_string()) r.bad(key, "must be an array of regular expressions");
        c.lora.targets.push_back(e.get<std::string>());
      }
    } else
      r.bad(key, "is not a known key");
  }
}

void parse_moe_ct(ModelConfig& c, const json& v, std::string_view src) {
  if (v.is_null()) return;
  if (!v.is_object()) fail(fmt::format("{}: 'moe_ct' must be an object or null", src));
  const std::string sub = fmt::format("{}: moe_ct", src);
  Reader r{v, sub};
  MoeCtConfig& m = c.moe_ct;
  for (auto& [key, t] : v.items()) {
    if (key == "experts")
      m.experts = r.integer(key);
    else if (key == "top_k")
      m.top_k = r.integer(key);
    else if (key == "lambda")
      m.lambda = r.number(key);
    else if (key == "gate") {
      const std::string g = r.string(key);
      if (g == "fixed")
        m.gate = CtGate::Fixed;
      else if (g == "scalar")
        m.gate = CtGate::Scalar;
      else if (g == "token")
        m.gate = CtGate::Token;
      else
        r.bad(key, "must be \"fixed\", \"scalar\" or \"token\"");
    } else if (key == "init") {
      const std::string g = r.string(key);
      if (g != "copy" && g != "random") r.bad(key, "must be \"copy\" or \"random\"");
      m.copy = g == "copy";
    } else if (key == "layers") {
      if (!t.is_array()) r.bad(key, "must be an array of layer indices");
      m.layers.clear();
      for (const json& e : t) {
        if (!e.is_number_integer()) r.bad(key, "must be an array of layer indices");
        m.layers.push_back(e.get<int64_t>());
      }
    } else
      r.bad(key, "is not a known key");
  }
}

void parse_ders(ModelConfig& c, const json& v, std::string_view src) {
  if (v.is_null()) return;
  if (!v.is_object()) fail(fmt::format("{}: 'ders' must be an object or null", src));
  const std::string sub = fmt::format("{}: ders", src);
  Reader r{v, sub};
  DersConfig& d = c.ders;
  for (auto& [key, t] : v.items()) {
    if (key == "delta") {
      const std::string k = r.string(key);
      if (k == "sparse")
        d.delta = DeltaKind::Sparse;
      else if (k == "lowrank")
        d.delta = DeltaKind::LowRank;
      else if (k == "quant")
        d.delta = DeltaKind::Quant;
      else if (k == "none")
        d.delta = DeltaKind::None;
      else
        r.bad(key, "must be \"sparse\", \"lowrank\", \"quant\" or \"none\"");
    } else if (key == "p")
      d.p = r.number(key);
    else if (key == "select") {
      const std::string k = r.string(key);
      if (k != "random" && k != "topk") r.bad(key, "must be \"random\" or \"topk\"");
      d.topk = k == "topk";
    } else if (key == "seed") {
      const int64_t s = r.integer(key);
      if (s < 0) r.bad(key, "must be >= 0");
      d.seed = uint64_t(s);
    } else if (key == "rank")
      d.rank = r.integer(key);
    else if (key == "alpha")
      d.alpha = r.number(key);
    else if (key == "bits")
      d.bits = r.integer(key);
    else if (key == "base") {
      d.base = r.string(key);
      if (d.base != "shared" && d.base != "dense" && d.base != "mean")
        r.bad(key, "must be \"shared\", \"dense\" or \"mean\"");
    } else
      r.bad(key, "is not a known key");
  }
}

void parse_router_balance(ModelConfig& c, const json& v, std::string_view src) {
  if (v.is_null()) return;
  if (!v.is_object()) fail(fmt::format("{}: 'router_balance' must be an object or null", src));
  const std::string sub = fmt::format("{}: router_balance", src);
  Reader r{v, sub};
  for (auto& [key, _] : v.items()) {
    if (key == "bias_rate")
      c.router_balance.bias_rate = r.number(key);
    else
      r.bad(key, "is not a known key");
  }
}

void parse_layer_list(std::vector<int64_t>& out, const Reader& r, const std::string& key) {
  const json& t = r.j.at(key);
  if (!t.is_array()) r.bad(key, "must be an array of layer indices");
  out.clear();
  for (const json& e : t) {
    if (!e.is_number_integer()) r.bad(key, "must be an array of layer indices");
    out.push_back(e.get<int64_t>());
  }
}

void parse_rope_scaling(ModelConfig& c, const json& v, std::string_view src) {
  if (v.is_null()) return;
  if (!v.is_object()) fail(fmt::format("{}: 'rope_scaling' must be an object or null", src));
  const std::string sub = fmt::format("{}: rope_scaling", src);
  Reader r{v, sub};
  for (auto& [key, _] : v.items()) {
    if (key == "rope_type" || key == "type") {
      if (r.string(key) != "yarn") r.bad(key, "must be \"yarn\" (the only scaling supported)");
    } else if (key == "factor") {
      c.yarn_factor = r.number(key);
    } else if (key == "beta_fast") {
      c.yarn_beta_fast = r.number(key);
    } else if (key == "beta_slow") {
      c.yarn_beta_slow = r.number(key);
    } else if (key == "original_max_position_embeddings") {
      c.yarn_original_context = r.integer(key);
    } else if (key == "truncate") {
      if (r.boolean(key)) r.bad(key, "must be false (gpt-oss does not round the YaRN ramp)");
    } else {
      r.bad(key, "is not a known key");
    }
  }
}

// ----------------------------------------------------------------------------
// sizes

// Upper bounds far beyond any model this code can train (gpt-oss-120b: d 2880, 36 layers, 128
// experts, 131k positions) that keep every size product and the parameter count well inside
// int64 and sized allocations sane: a typo such as 1e12 layers is refused, not attempted.
constexpr int64_t kMaxWidth = int64_t(1) << 20;      // hidden_size, head_dim, intermediate_size
constexpr int64_t kMaxCount = int64_t(1) << 14;      // layers, attention and key/value heads
constexpr int64_t kMaxExperts = int64_t(1) << 16;    // num_local_experts
constexpr int64_t kMaxPositions = int64_t(1) << 26;  // max_position_embeddings, YaRN context
constexpr double kMaxParams = 0x1p48;                // about 2.8e14 parameters

// Counts and widths: positive and bounded, and the whole model countable without overflow.
void config_validate_sizes(const ModelConfig& c, std::string_view src) {
  auto size = [&](int64_t v, std::string_view key, int64_t most) {
    if (v <= 0) fail(fmt::format("{}: '{}' must be positive (got {})", src, key, v));
    if (v > most)
      fail(fmt::format("{}: '{}' is too large (got {}, at most {})", src, key, v, most));
  };
  size(c.vocab_size, "vocab_size", (int64_t(1) << 31) - 1);
  size(c.hidden_size, "hidden_size", kMaxWidth);
  size(c.num_hidden_layers, "num_hidden_layers", kMaxCount);
  size(c.num_attention_heads, "num_attention_heads", kMaxCount);
  size(c.num_key_value_heads, "num_key_value_heads", kMaxCount);
  size(c.head_dim, "head_dim", kMaxWidth);
  size(c.intermediate_size, "intermediate_size", kMaxWidth);
  size(c.num_local_experts, "num_local_experts", kMaxExperts);
  size(c.num_experts_per_tok, "num_experts_per_tok", kMaxExperts);
  size(c.max_position_embeddings, "max_position_embeddings", kMaxPositions);
  size(c.yarn_original_context, "rope_scaling.original_max_position_embeddings", kMaxPositions);
  // The count in floating point, so that it cannot overflow here.
  const double params = config_count_as<double>(c).total;
  if (params > kMaxParams)
    fail(fmt::format("{}: the model would have {:.3g} parameters, more than the {:.3g} supported",
                     src, params, kMaxParams));
}

}  // namespace

ModelConfig config_from_json(const json& j, std::string_view src) {
  if (!j.is_object()) fail(fmt::format("{}: a model config must be a JSON object", src));
  ModelConfig c;
  Reader r{j, src};
  bool have_k = false;
  const json* layer_types = nullptr;
  for (auto& [key, v] : j.items()) {
    if (key == "vocab_size")
      c.vocab_size = r.integer(key);
    else if (key == "hidden_size")
      c.hidden_size = r.integer(key);
    else if (key == "num_hidden_layers")
      c.num_hidden_layers = r.integer(key);
    else if (key == "num_attention_heads")
      c.num_attention_heads = r.integer(key);
    else if (key == "num_key_value_heads")
      c.num_key_value_heads = r.integer(key);
    else if (key == "head_dim")
      c.head_dim = r.integer(key);
    else if (key == "intermediate_size")
      c.intermediate_size = r.integer(key);
    else if (key == "num_local_experts")
      c.num_local_experts = r.integer(key);
    else if (key == "num_experts_per_tok" || key == "experts_per_token") {
      c.num_experts_per_tok = r.integer(key);
      have_k = true;
    } else if (key == "ffn_type") {
      const std::string s = r.string(key);
      if (s == "dense")
        c.ffn_type = FfnKind::Dense;
      else if (s == "moe")
        c.ffn_type = FfnKind::Moe;
      else
        r.bad(key, "must be \"dense\" or \"moe\"");
    } else if (key == "sliding_window") {
      c.sliding_window = v.is_null() ? 0 : r.integer(key);
    } else if (key == "layer_types") {
      layer_types = &v;
    } else if (key == "attention_sinks")
      c.attention_sinks = r.boolean(key);
    else if (key == "attention_bias")
      c.attention_bias = r.boolean(key);
    else if (key == "rope_theta")
      c.rope_theta = r.number(key);
    else if (key == "rope_scaling")
      parse_rope_scaling(c, v, src);
    else if (key == "lora")
      parse_lora(c, v, src);
    else if (key == "moe_ct")
      parse_moe_ct(c, v, src);
    else if (key == "ders")
      parse_ders(c, v, src);
    else if (key == "moe_layers")
      parse_layer_list(c.moe_layers, r, key);
    else if (key == "max_position_embeddings")
      c.max_position_embeddings = r.integer(key);
    else if (key == "rms_norm_eps")
      c.rms_norm_eps = r.number(key);
    else if (key == "swiglu_limit")
      c.swiglu_limit = v.is_null() ? 0.0 : r.number(key);
    else if (key == "swiglu_alpha")
      c.swiglu_alpha = r.number(key);
    else if (key == "router_aux_loss_coef")
      c.router_aux_loss_coef = r.number(key);
    else if (key == "router_z_loss_coef")
      c.router_z_loss_coef = r.number(key);
    else if (key == "router_balance")
      parse_router_balance(c, v, src);
    else if (key == "tie_word_embeddings")
      c.tie_word_embeddings = r.boolean(key);
    else if (key == "initializer_range")
      c.initializer_range = r.number(key);
    else if (!kIgnoredKeys.contains(key))
      r.bad(key, "is not a known key");
  }
  // A config with several experts and no explicit ffn_type is an MoE (HF GptOss files).
  if (!j.contains("ffn_type") && c.num_local_experts > 1) c.ffn_type = FfnKind::Moe;
  if (c.ffn_type == FfnKind::Dense && !have_k) c.num_experts_per_tok = 1;
  if (layer_types) {
    if (!layer_types->is_array()) r.bad("layer_types", "must be an array of strings");
    c.layer_sliding.clear();
    for (const json& t : *layer_types) {
      if (t == "sliding_attention")
        c.layer_sliding.push_back(true);
      else if (t == "full_attention")
        c.layer_sliding.push_back(false);
      else
        r.bad("layer_types", "entries must be \"sliding_attention\" or \"full_attention\"");
    }
  } else {
    // gpt-oss: sliding on even layers, full on odd ones (when a window is set). The layer count
    // is checked first: it sizes this list.
    config_validate_sizes(c, src);
    c.layer_sliding.assign(size_t(c.num_hidden_layers), false);
    if (c.sliding_window > 0)
      for (size_t l = 0; l < c.layer_sliding.size(); l += 2) c.layer_sliding[l] = true;
  }
  config_validate(c, src);
  return c;
}

void config_validate(const ModelConfig& c, std::string_view src) {
  auto need = [&](bool ok, std::string_view msg) {
    if (!ok) fail(fmt::format("{}: {}", src, msg));
  };
  config_validate_sizes(c, src);
  need(c.head_dim % 2 == 0, fmt::format("'head_dim' must be even for RoPE (got {})", c.head_dim));
  need(c.num_attention_heads % c.num_key_value_heads == 0,
       fmt::format("'num_attention_heads' ({}) is not divisible by 'num_key_value_heads' ({})",
                   c.num_attention_heads, c.num_key_value_heads));
  need(c.num_experts_per_tok <= c.num_local_experts,
       fmt::format("'num_experts_per_tok' ({}) is larger than 'num_local_experts' ({})",
                   c.num_experts_per_tok, c.num_local_experts));
  if (c.ffn_type == FfnKind::Dense)
    need(c.num_local_experts == 1 && c.num_experts_per_tok == 1,
         "'ffn_type' \"dense\" needs num_local_experts = 1 and num_experts_per_tok = 1");
  need(int64_t(c.layer_sliding.size()) == c.num_hidden_layers,
       fmt::format("'layer_types' has {} entries for {} layers", c.layer_sliding.size(),
                   c.num_hidden_layers));
  need(c.sliding_window >= 0, "'sliding_window' must be >= 0");
  const bool any_sliding =
      std::find(c.layer_sliding.begin(), c.layer_sliding.end(), true) != c.layer_sliding.end();
  need(!any_sliding || c.sliding_window > 0,
       "'layer_types' has sliding_attention layers but 'sliding_window' is 0");
  // Numbers from TOML (experiment files) can be inf or nan; none of these may be.
  for (auto [v, key] : {std::pair{c.rope_theta, "rope_theta"},
                        {c.yarn_factor, "rope_scaling.factor"},
                        {c.yarn_beta_fast, "rope_scaling.beta_fast"},
                        {c.yarn_beta_slow, "rope_scaling.beta_slow"},
                        {c.rms_norm_eps, "rms_norm_eps"},
                        {c.swiglu_limit, "swiglu_limit"},
                        {c.swiglu_alpha, "swiglu_alpha"},
                        {c.router_aux_loss_coef, "router_aux_loss_coef"},
                        {c.router_z_loss_coef, "router_z_loss_coef"},
                        {c.router_balance.bias_rate, "router_balance.bias_rate"},
                        {c.initializer_range, "initializer_range"}})
    need(std::isfinite(v), fmt::format("'{}' must be a finite number (got {})", key, v));
  need(c.rope_theta > 0, "'rope_theta' must be positive");
  need(c.yarn_factor >= 1.0, "'rope_scaling.factor' must be >= 1");
  need(c.yarn_beta_fast > c.yarn_beta_slow && c.yarn_beta_slow > 0,
       "'rope_scaling' needs beta_fast > beta_slow > 0");
  need(c.rms_norm_eps > 0, "'rms_norm_eps' must be positive");
  need(c.swiglu_alpha > 0, "'swiglu_alpha' must be positive");
  need(c.router_aux_loss_coef >= 0, "'router_aux_loss_coef' must be >= 0");
  need(c.router_z_loss_coef >= 0, "'router_z_loss_coef' must be >= 0");
  need(c.router_balance.bias_rate >= 0,
       fmt::format("'router_balance.bias_rate' must be >= 0 (got {})", c.router_balance.bias_rate));
  need(!c.router_balance.on() || c.num_local_experts > 1,
       "'router_balance' needs routed experts (num_local_experts > 1)");
  need(c.initializer_range > 0, "'initializer_range' must be positive");
  const MoeCtConfig& m = c.moe_ct;
  if (m.experts != 0) {
    need(m.experts >= 1 && m.experts <= 65536, "'moe_ct.experts' must be in [1, 65536]");
    need(
        m.top_k >= 1 && m.top_k <= m.experts,
        fmt::format("'moe_ct.top_k' ({}) must be in [1, moe_ct.experts ({})]", m.top_k, m.experts));
    need(std::isfinite(m.lambda) && m.lambda >= 0 && m.lambda <= 1,
         "'moe_ct.lambda' must be in [0, 1]");
    need(m.gate != CtGate::Token || (m.lambda > 0 && m.lambda < 1),
         "'moe_ct.lambda' must be in (0, 1) for the token gate (it is sigmoid(b) at the start)");
    for (int64_t l : m.layers)
      need(
          l >= 0 && l < c.num_hidden_layers,
          fmt::format("'moe_ct.layers': layer {} is out of range [0, {})", l, c.num_hidden_layers));
  }
  for (int64_t l : c.moe_layers)
    need(l >= 0 && l < c.num_hidden_layers,
         fmt::format("'moe_layers': layer {} is out of range [0, {})", l, c.num_hidden_layers));
  const DersConfig& ds = c.ders;
  if (ds.on()) {
    need(c.num_local_experts > 1 || c.moe_ct.experts > 1,
         "'ders' needs routed experts (num_local_experts or moe_ct.experts > 1)");
    need(std::isfinite(ds.p) && ds.p >= 0 && ds.p < 1,
         fmt::format("'ders.p' must be in [0, 1) (got {})", ds.p));
    need(ds.rank >= 1 && ds.rank <= 65536, "'ders.rank' must be in [1, 65536]");
    need(ds.bits >= 1 && ds.bits <= 8,
         fmt::format("'ders.bits' must be in 1..8 (got {})", ds.bits));
    need(std::isfinite(ds.alpha) && ds.alpha >= 0, "'ders.alpha' must be a finite number >= 0");
    const int64_t full = std::min(c.hidden_size, c.intermediate_size);
    need(ds.delta != DeltaKind::LowRank || ds.rank <= full,
         fmt::format("'ders.rank' ({}) exceeds the rank of an expert matrix ({})", ds.rank, full));
  }
  need(c.moe_layers.empty() || c.num_local_experts > 1, "'moe_layers' needs num_local_experts > 1");
  if (c.lora.rank != 0 || !c.lora.targets.empty()) {
    need(c.lora.rank >= 1 && c.lora.rank <= 65536, "'lora.rank' must be in [1, 65536]");
    need(std::isfinite(c.lora.alpha) && c.lora.alpha >= 0,
         "'lora.alpha' must be a finite number >= 0");
    need(!c.lora.targets.empty(), "'lora.targets' must name at least one weight pattern");
    for (const std::string& t : c.lora.targets) try {
        (void)std::regex(t);
      } catch (const std::regex_error&) {
        need(false, fmt::format("'lora.targets': '{}' is not a valid regular expression", t));
      }
  }
}

json config_to_json(const ModelConfig& c) {
  json lt = json::array();
  for (bool s : c.layer_sliding) lt.push_back(s ? "sliding_attention" : "full_attention");
  json j = {{"model_type", "gpt_oss"},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim},
            {"ffn_type", c.is_moe() ? "moe" : "dense"},
            {"num_local_experts", c.num_local_experts},
            {"num_experts_per_tok", c.num_experts_per_tok},
            {"intermediate_size", c.intermediate_size},
            {"sliding_window", c.sliding_window},
            {"layer_types", lt},
            {"attention_sinks", c.attention_sinks},
            {"attention_bias", c.attention_bias},
            {"rope_theta", c.rope_theta},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"swiglu_limit", c.swiglu_limit},
            {"swiglu_alpha", c.swiglu_alpha},
            {"router_aux_loss_coef", c.router_aux_loss_coef},
            {"router_z_loss_coef", c.router_z_loss_coef},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"initializer_range", c.initializer_range}};
  if (c.yarn_factor > 1.0)
    j["rope_scaling"] = {{"rope_type", "yarn"},
                         {"factor", c.yarn_factor},
                         {"beta_fast", c.yarn_beta_fast},
                         {"beta_slow", c.yarn_beta_slow},
                         {"original_max_position_embeddings", c.yarn_original_context},
                         {"truncate", false}};
  else
    j["rope_scaling"] = nullptr;
  if (c.moe_ct.experts > 0) {
    const MoeCtConfig& m = c.moe_ct;
    const char* gate = m.gate == CtGate::Fixed    ? "fixed"
                       : m.gate == CtGate::Scalar ? "scalar"
                                                  : "token";
    j["moe_ct"] = {{"experts", m.experts},
                   {"top_k", m.top_k},
                   {"gate", gate},
                   {"lambda", m.lambda},
                   {"init", m.copy ? "copy" : "random"},
                   {"layers", m.layers}};
  }
  if (!c.moe_layers.empty()) j["moe_layers"] = c.moe_layers;
  if (c.router_balance.on()) j["router_balance"] = {{"bias_rate", c.router_balance.bias_rate}};
  if (c.ders.on()) {
    const DersConfig& d = c.ders;
    const char* kind = d.delta == DeltaKind::Sparse    ? "sparse"
                       : d.delta == DeltaKind::LowRank ? "lowrank"
                                                       : "quant";
    j["ders"] = {{"delta", kind}, {"base", d.base}};
    if (d.delta == DeltaKind::Sparse)
      j["ders"].update({{"p", d.p}, {"select", d.topk ? "topk" : "random"}, {"seed", d.seed}});
    if (d.delta == DeltaKind::LowRank) j["ders"].update({{"rank", d.rank}, {"alpha", d.alpha}});
    if (d.delta == DeltaKind::Quant) j["ders"]["bits"] = d.bits;
  }
  if (c.lora.rank > 0)
    j["lora"] = {{"rank", c.lora.rank}, {"alpha", c.lora.alpha}, {"targets", c.lora.targets}};
  return j;
}

bool ders_parse_spelling(std::string_view s, DersConfig& d) {
  if (s == "none") return d.delta = DeltaKind::None, true;
  const size_t colon = s.find(':');
  const std::string_view kind = s.substr(0, colon);
  const std::string_view arg = colon == s.npos ? std::string_view() : s.substr(colon + 1);
  if (kind == "sparse") return d.delta = DeltaKind::Sparse, parse_number(arg, d.p);
  if (kind == "lowrank") return d.delta = DeltaKind::LowRank, parse_number(arg, d.rank);
  if (kind == "quant") return d.delta = DeltaKind::Quant, parse_number(arg, d.bits);
  return false;
}

std::string ders_spelling(const DersConfig& d) {
  switch (d.delta) {
    case DeltaKind::Sparse:
      return fmt::format("sparse:{}", d.p);
    case DeltaKind::LowRank:
      return fmt::format("lowrank:{}", d.rank);
    case DeltaKind::Quant:
      return fmt::format("quant:{}", d.bits);
    default:
      return "none";
  }
}

int64_t DersConfig::nnz(int64_t n) const {
  return std::clamp<int64_t>(std::llround((1.0 - p) * double(n)), 1, n);
}

bool ModelConfig::moe_at(int64_t layer) const {
  return num_local_experts > 1 &&
         (moe_layers.empty() ||
          std::find(moe_layers.begin(), moe_layers.end(), layer) != moe_layers.end());
}

ModelConfig ModelConfig::layer_config(int64_t layer) const {
  ModelConfig c = *this;
  c.moe_layers.clear();
  if (num_local_experts > 1 && !moe_at(layer)) {
    c.ffn_type = FfnKind::Dense;
    c.num_local_experts = c.num_experts_per_tok = 1;
    c.ders = {};
    c.router_balance = {};
  }
  return c;
}

bool MoeCtConfig::on(int64_t layer) const {
  return experts > 0 &&
         (layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end());
}

ModelConfig config_load(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path + ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number beyond double (1e309).
    fail(fmt::format("{}: invalid JSON ({})", path, e.what()));
  }
  if (j.is_object() && j.contains("model")) return config_from_json(j["model"], path + ": model");
  return config_from_json(j, path);
}

// The stored numbers of one layer's expert matrices and biases: E full experts, or with DeRS one
// base plus E deltas (sparse: the kept values; low-rank: the factors; quant: the codes and
// scales).
template <typename N>
N config_count_experts(const ModelConfig& c, N E) {
  const N d = N(c.hidden_size), I = N(c.intermediate_size);
  const N biases = E * (2 * I + d), mats = d * 2 * I + I * d;
  const DersConfig& ds = c.ders;
  if (!ds.on() || E <= 1) return E * mats + biases;
  const N r = N(ds.rank);
  switch (ds.delta) {
    case DeltaKind::Sparse:
      return mats + biases +
             E * (N(ds.nnz(2 * c.hidden_size * c.intermediate_size)) +
                  N(ds.nnz(c.intermediate_size * c.hidden_size)));
    case DeltaKind::LowRank:
      return mats + biases + E * r * (d + 2 * I + I + d);
    default:  // quant: codes, and a scale per output channel
      return mats + biases + E * (mats + 2 * I + d);
  }
}

template <typename N>
ParamCountsOf<N> config_count_as(const ModelConfig& c) {
  const N d = N(c.hidden_size), L = N(c.num_hidden_layers);
  const N q = N(c.num_attention_heads) * N(c.head_dim),
          kv = N(c.num_key_value_heads) * N(c.head_dim);
  const N I = N(c.intermediate_size), V = N(c.vocab_size);
  ParamCountsOf<N> p;
  p.embedding = V * d;
  p.unembedding = c.tie_word_embeddings ? 0 : V * d;
  const N attn_layer = (q + 2 * kv) * d + (c.attention_bias ? q + 2 * kv + d : 0) + q * d +
                       (c.attention_sinks ? N(c.num_attention_heads) : 0);
  p.attention = L * attn_layer;
  p.per_expert = d * 2 * I + 2 * I + I * d + d;
  N active_experts = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const bool moe = c.moe_at(l);
    const N E = moe ? N(c.num_local_experts) : 1, k = moe ? N(c.num_experts_per_tok) : 1;
    // the router, and its balance bias (not trained, but stored)
    if (c.is_moe() && moe) p.router += d * E + E + (c.router_balance.on() ? E : 0);
    p.experts += config_count_experts(c, E);
    active_experts += k * p.per_expert;
    if (c.moe_ct.on(l)) {  // MoE-CT: N new experts, their router and the gate
      const N n = N(c.moe_ct.experts);
      p.router += d * n + n +
                  (c.moe_ct.gate == CtGate::Token    ? d + 1
                   : c.moe_ct.gate == CtGate::Scalar ? 1
                                                     : 0);
      p.experts += config_count_experts(c, n);
      active_experts += N(c.moe_ct.top_k) * p.per_expert;
    }
  }
  p.norms = L * 2 * d + d;
  p.total = p.embedding + p.unembedding + p.attention + p.router + p.experts + p.norms;
  // The output head is active even when tied (it is then the embedding matrix).
  p.active =
      p.total - p.embedding - p.experts + active_experts + (c.tie_word_embeddings ? V * d : 0);
  return p;
}
template ParamCountsOf<int64_t> config_count_as<int64_t>(const ModelConfig&);
template ParamCountsOf<double> config_count_as<double>(const ModelConfig&);

FlopCounts config_flops(const ModelConfig& c, int64_t seq) {
  const double d = double(c.hidden_size), L = double(c.num_hidden_layers);
  const double hq = double(c.num_attention_heads * c.head_dim);
  const double hkv = double(c.num_key_value_heads * c.head_dim);
  const double I = double(c.intermediate_size), V = double(c.vocab_size);
  const double attn_w = (hq + 2 * hkv) * d + hq * d;
  const double expert_w = 3 * d * I;
  // Summed over layers: active expert matrices (k per layer) and router columns (E per layer).
  double k_sum = 0, router_sum = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const bool moe = c.moe_at(l);
    k_sum += moe ? double(c.num_experts_per_tok) : 1.0;
    router_sum += c.is_moe() && moe ? double(c.num_local_experts) : 0.0;
    if (c.moe_ct.on(l))  // MoE-CT's new experts beside the layer's FFN
      k_sum += double(c.moe_ct.top_k), router_sum += double(c.moe_ct.experts);
  }
  constexpr double Cf = 6.0, R = 14.0;
  // Average number of keys a query attends to, per layer kind, over positions 0..seq-1: the
  // mean of min(i + 1, window), in closed form (seq can be the whole context).
  auto ctx = [&](int64_t window) {
    const double n = double(seq);
    if (window <= 0 || window >= seq) return (n + 1) / 2;
    const double w = double(window);
    return (w * (w + 1) / 2 + (n - w) * w) / n;
  };
  double attn_ctx = 0;
  for (bool sliding : c.layer_sliding) attn_ctx += ctx(sliding ? c.sliding_window : 0);
  FlopCounts f;
  f.train_per_token =
      Cf * (L * attn_w + d * router_sum + k_sum * expert_w + V * d) + 2 * Cf * hq * attn_ctx;
  f.spec52_per_token = L * (Cf * attn_w + 2 * Cf * hq * double(seq)) + Cf * k_sum * expert_w +
                       R * d * router_sum + Cf * V * d;
  f.six_na = Cf * double(config_count(c).active);
  f.forward_parts = {{"qkv proj", 2 * L * (hq + 2 * hkv) * d},
                     {"out proj", 2 * L * hq * d},
                     {"router", 2 * d * router_sum},
                     {"expert gemm", 2 * k_sum * expert_w},
                     {"lm head", 2 * V * d},
                     {"attention", 4 * hq * attn_ctx}};
  return f;
}

ModelConfig config_iso_moe(const ModelConfig& dense, int64_t E, int64_t k) {
  if (dense.num_local_experts != 1)
    fail(
        fmt::format("--iso-moe needs a dense config (it has {} experts)", dense.num_local_experts));
  if (E < 1 || k < 1 || k > E)
    fail(fmt::format("--iso-moe {},{}: need 1 <= top-k <= experts", E, k));
  if (dense.intermediate_size % E != 0)
    fail(fmt::format("--iso-moe {}: intermediate_size {} is not divisible by {} experts", E,
                     dense.intermediate_size, E));
  ModelConfig m = dense;
  m.ffn_type = FfnKind::Moe;
  m.num_local_experts = E;
  m.num_experts_per_tok = k;
  m.intermediate_size = dense.intermediate_size / E;
  return m;
}

}  // namespace moelab
