// Hugging Face GptOss interop: config.json and the tensor mapping (hf.hpp). The files and the
// commands are in hf_files.cpp.
#include "convert/hf.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <span>

#include "core/error.hpp"
#include "model/lora.hpp"

namespace moelab {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ----------------------------------------------------------------------------
// config.json

// transformers (pinned-era _compute_yarn_parameters) takes the YaRN factor as
// max_position_embeddings / original_max_position_embeddings whenever the latter is given, newer
// versions take "factor": a config is exact under both only when the two agree.
bool yarn_factor_agrees(double factor, int64_t max_pos, int64_t original) {
  return double(max_pos) / double(original) == factor;
}

// transformers clamps the YaRN ramp's ends to [0, head_dim - 1] (find_correction_range), moelab
// does not: the two agree only where the ends lie inside.
bool yarn_ramp_inside(double theta, int64_t head_dim, int64_t original, double beta_fast,
                      double beta_slow) {
  auto dim = [&](double rotations) {
    return double(head_dim) * std::log(double(original) / (rotations * 2 * M_PI)) /
           (2 * std::log(theta));
  };
  return dim(beta_fast) >= 0 && dim(beta_slow) <= double(head_dim - 1);
}

void refuse_inexpressible(const ModelConfig& c) {
  auto refuse = [](std::string_view key, const std::string& why) {
    fail(fmt::format("export hf: '{}' {}", key, why));
  };
  if (c.moe_ct.experts > 0)
    refuse("moe_ct", "(MoE-CT's gated mix of the FFN and new experts) has no GptOss form");
  check(c.lora.rank == 0 && !c.ders.on(), "hf_config_json: merge adapters and deltas first");
  if (c.swiglu_alpha != kHfSwigluAlpha)
    refuse("swiglu_alpha", fmt::format("is {}; transformers' GptOss hard-codes {}", c.swiglu_alpha,
                                       kHfSwigluAlpha));
  if (c.swiglu_limit != kHfSwigluLimit)
    refuse("swiglu_limit", fmt::format("is {}; transformers' GptOss hard-codes {}", c.swiglu_limit,
                                       kHfSwigluLimit));
  if (c.yarn_factor > 1.0 &&
      !yarn_factor_agrees(c.yarn_factor, c.max_position_embeddings, c.yarn_original_context))
    refuse("rope_scaling.factor",
           fmt::format("is {} but max_position_embeddings / original_max_position_embeddings is "
                       "{} / {}: transformers versions disagree on which they use",
                       c.yarn_factor, c.max_position_embeddings, c.yarn_original_context));
  if (c.yarn_factor > 1.0 && !yarn_ramp_inside(c.rope_theta, c.head_dim, c.yarn_original_context,
                                               c.yarn_beta_fast, c.yarn_beta_slow))
    refuse("rope_scaling.original_max_position_embeddings",
           fmt::format("({}) puts the YaRN ramp's ends outside [0, head_dim - 1], where "
                       "transformers clamps them and moelab does not",
                       c.yarn_original_context));
}

ojson rope_json(const ModelConfig& c) {
  if (c.yarn_factor <= 1.0) return {{"rope_type", "default"}};
  // "truncate": false is gpt-oss's own (transformers' default rounds the ramp's ends)
  return {{"beta_fast", c.yarn_beta_fast},
          {"beta_slow", c.yarn_beta_slow},
          {"factor", c.yarn_factor},
          {"original_max_position_embeddings", c.yarn_original_context},
          {"rope_type", "yarn"},
          {"truncate", false}};
}

// What only moelab reads, so that import restores the config exactly.
ojson moelab_extras(const ModelConfig& c) {
  ojson m = {{"ffn_type", c.is_moe() ? "moe" : "dense"},
             {"router_z_loss_coef", c.router_z_loss_coef}};
  if (!c.moe_layers.empty()) m["moe_layers"] = c.moe_layers;
  if (!c.attention_sinks) m["attention_sinks"] = false;
  if (c.router_balance.on()) m["router_balance"] = {{"bias_rate", c.router_balance.bias_rate}};
  return m;
}

// GptOssConfig's defaults (configuration_gpt_oss.py) for keys a config.json may leave out.
json hf_defaults() {
  return {{"num_hidden_layers", 36},   {"num_local_experts", 128},
          {"vocab_size", 201088},      {"hidden_size", 2880},
          {"intermediate_size", 2880}, {"head_dim", 64},
          {"num_attention_heads", 64}, {"num_key_value_heads", 8},
          {"sliding_window", 128},     {"tie_word_embeddings", false},
          {"initializer_range", 0.02}, {"max_position_embeddings", 131072},
          {"rms_norm_eps", 1e-5},      {"rope_theta", 150000.0},
          {"num_experts_per_tok", 4},  {"router_aux_loss_coef", 0.001},
          {"attention_bias", true}};
}

// Keys read into the moelab config as they are.
const std::set<std::string> kHfModelKeys = {
    "num_hidden_layers",    "num_local_experts",   "vocab_size",
    "hidden_size",          "intermediate_size",   "head_dim",
    "num_attention_heads",  "num_key_value_heads", "sliding_window",
    "tie_word_embeddings",  "initializer_range",   "max_position_embeddings",
    "rms_norm_eps",         "rope_theta",          "num_experts_per_tok",
    "router_aux_loss_coef", "attention_bias"};
// Keys that do not change the function (or are handled apart).
const std::set<std::string> kHfOtherKeys = {"architectures",
                                            "model_type",
                                            "torch_dtype",
                                            "dtype",
                                            "transformers_version",
                                            "_name_or_path",
                                            "use_cache",
                                            "attention_dropout",
                                            "output_router_logits",
                                            "hidden_act",
                                            "initial_context_length",
                                            "eos_token_id",
                                            "bos_token_id",
                                            "pad_token_id",
                                            "experts_per_token",
                                            "layer_types",
                                            "rope_scaling",
                                            "rope_parameters",
                                            "swiglu_limit",
                                            "swiglu_alpha",
                                            "moelab"};

// rope_scaling (or transformers 5's rope_parameters) into o's rope_scaling / rope_theta.
void parse_rope(const json& j, json& o, std::string_view src) {
  const char* key = j.contains("rope_parameters") && !j.contains("rope_scaling") ? "rope_parameters"
                                                                                 : "rope_scaling";
  if (!j.contains(key) || j[key].is_null()) return;  // plain RoPE (transformers 4)
  const json& r = j[key];
  if (!r.is_object()) fail(fmt::format("{}: '{}' must be an object or null", src, key));
  json y = r;
  if (y.contains("rope_theta")) o["rope_theta"] = y["rope_theta"], y.erase("rope_theta");
  const std::string type = y.value("rope_type", y.value("type", std::string("default")));
  if (type == "default") return;
  if (type != "yarn")
    fail(fmt::format("{}: '{}.rope_type' is \"{}\" (only yarn and default are read)", src, key,
                     type));
  for (const char* k : {"attention_factor", "mscale", "mscale_all_dim"})
    if (y.contains(k)) fail(fmt::format("{}: '{}.{}' is not supported", src, key, k));
  if (!y.contains("truncate") || y["truncate"] != false)
    fail(
        fmt::format("{}: '{}.truncate' must be false (transformers' default true rounds the "
                    "YaRN ramp, which gpt-oss does not)",
                    src, key));
  const int64_t max_pos = o.at("max_position_embeddings").get<int64_t>();
  if (!y.contains("original_max_position_embeddings"))
    y["original_max_position_embeddings"] = max_pos;
  const double factor = y.value("factor", 1.0);
  if (!y["original_max_position_embeddings"].is_number_integer() ||
      !yarn_factor_agrees(factor, max_pos, y["original_max_position_embeddings"].get<int64_t>()))
    fail(
        fmt::format("{}: '{}.factor' {} differs from max_position_embeddings / "
                    "original_max_position_embeddings (transformers versions disagree on "
                    "which they use)",
                    src, key, factor));
  const auto num = [&](const char* k, double d) {
    return y.contains(k) && y[k].is_number() ? y[k].get<double>() : d;
  };
  const double theta = o["rope_theta"].is_number() ? o["rope_theta"].get<double>() : 0;
  if (theta > 1 && o["head_dim"].is_number_integer() &&
      !yarn_ramp_inside(theta, o["head_dim"].get<int64_t>(),
                        y["original_max_position_embeddings"].get<int64_t>(), num("beta_fast", 32),
                        num("beta_slow", 1)))
    fail(
        fmt::format("{}: '{}.original_max_position_embeddings' puts the YaRN ramp's ends "
                    "outside [0, head_dim - 1], where transformers clamps them and moelab does "
                    "not",
                    src, key));
  o["rope_scaling"] = y;
}

// layer_types as GptOssConfig fills it (sliding on even layers); all full without a window.
json parse_layer_types(const json& j, const json& o) {
  const int64_t L = o.at("num_hidden_layers").get<int64_t>();
  json lt = json::array();
  if (j.contains("layer_types") && !j["layer_types"].is_null())
    lt = j["layer_types"];
  else
    for (int64_t i = 0; i < L; i++)
      lt.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");
  if (o.at("sliding_window").get<int64_t>() == 0 && lt.is_array())
    for (json& t : lt) t = "full_attention";  // no window: a sliding layer is a full one
  return lt;
}

}  // namespace

ojson hf_config_json(const ModelConfig& c) {
  refuse_inexpressible(c);
  json lt = json::array();
  for (bool s : c.layer_sliding) lt.push_back(s ? "sliding_attention" : "full_attention");
  ojson j = {{"architectures", {"GptOssForCausalLM"}},
             {"model_type", "gpt_oss"},
             {"attention_bias", c.attention_bias},
             {"attention_dropout", 0.0},
             {"bos_token_id", nullptr},
             {"eos_token_id", nullptr},
             {"pad_token_id", nullptr},
             {"experts_per_token", c.num_experts_per_tok},
             {"head_dim", c.head_dim},
             {"hidden_act", "silu"},
             {"hidden_size", c.hidden_size},
             {"initial_context_length", c.yarn_original_context},
             {"initializer_range", c.initializer_range},
             {"intermediate_size", c.intermediate_size},
             {"layer_types", lt},
             {"max_position_embeddings", c.max_position_embeddings},
             {"num_attention_heads", c.num_attention_heads},
             {"num_experts_per_tok", c.num_experts_per_tok},
             {"num_hidden_layers", c.num_hidden_layers},
             {"num_key_value_heads", c.num_key_value_heads},
             {"num_local_experts", c.num_local_experts},
             {"output_router_logits", false},
             {"rms_norm_eps", c.rms_norm_eps},
             {"rope_scaling", rope_json(c)},
             {"rope_theta", c.rope_theta},
             {"router_aux_loss_coef", c.router_aux_loss_coef},
             {"sliding_window", c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr)},
             {"swiglu_limit", kHfSwigluLimit},
             {"tie_word_embeddings", c.tie_word_embeddings},
             {"torch_dtype", "float32"},
             {"use_cache", true},
             {"vocab_size", c.vocab_size},
             {"moelab", moelab_extras(c)}};
  return j;
}

ModelConfig hf_config_parse(const json& j, std::string_view src) {
  if (!j.is_object()) fail(fmt::format("{}: a config must be a JSON object", src));
  if (j.contains("quantization_config"))
    fail(
        fmt::format("{}: 'quantization_config' is set (MXFP4 experts are not read; use a "
                    "dequantized bf16/f32 copy)",
                    src));
  if (j.value("model_type", std::string("gpt_oss")) != "gpt_oss")
    fail(fmt::format("{}: 'model_type' is {}, not \"gpt_oss\"", src, j["model_type"].dump()));
  for (auto& [key, _] : j.items())
    if (!kHfModelKeys.contains(key) && !kHfOtherKeys.contains(key))
      fail(fmt::format("{}: '{}' is not a GptOss key this import knows", src, key));
  for (auto [key, want] :
       {std::pair{"swiglu_limit", kHfSwigluLimit}, {"swiglu_alpha", kHfSwigluAlpha}})
    if (j.contains(key) && !(j[key].is_number() && j[key].get<double>() == want))
      fail(
          fmt::format("{}: '{}' is {}; transformers' GptOss computes with {} whatever the file "
                      "says",
                      src, key, j[key].dump(), want));
  json o = hf_defaults();
  for (auto& [key, v] : j.items())
    if (kHfModelKeys.contains(key)) o[key] = v;
  if (!j.contains("num_experts_per_tok") && j.contains("experts_per_token"))
    o["num_experts_per_tok"] = j["experts_per_token"];
  if (o["num_key_value_heads"].is_null()) o["num_key_value_heads"] = o["num_attention_heads"];
  if (o["head_dim"].is_null() && o["hidden_size"].is_number_integer() &&
      o["num_attention_heads"].is_number_integer() && o["num_attention_heads"] != 0)
    o["head_dim"] = o["hidden_size"].get<int64_t>() / o["num_attention_heads"].get<int64_t>();
  if (o["sliding_window"].is_null()) o["sliding_window"] = 0;
  for (const char* k : {"num_hidden_layers", "sliding_window", "max_position_embeddings"})
    if (!o[k].is_number_integer()) fail(fmt::format("{}: '{}' must be an integer", src, k));
  o["layer_types"] = parse_layer_types(j, o);
  parse_rope(j, o, src);
  const int64_t E =
      o["num_local_experts"].is_number_integer() ? o["num_local_experts"].get<int64_t>() : 0;
  // moelab's own facts where the file has them; a foreign file: an MoE when E > 1, no z-loss
  o["ffn_type"] = E > 1 ? "moe" : "dense";
  o["router_z_loss_coef"] = 0.0;
  if (j.contains("moelab")) {
    if (!j["moelab"].is_object()) fail(fmt::format("{}: 'moelab' must be an object", src));
    for (auto& [key, v] : j["moelab"].items()) {
      if (key == "merged" || key == "tokenizer_fingerprint") continue;  // for the trainer state
      if (key != "ffn_type" && key != "router_z_loss_coef" && key != "moe_layers" &&
          key != "attention_sinks" && key != "router_balance")
        fail(fmt::format("{}: 'moelab.{}' is not a known key", src, key));
      o[key] = v;
    }
  }
  return config_from_json(o, src);
}

// ----------------------------------------------------------------------------
// tensors

std::vector<HfTensor> hf_layout(const ModelConfig& c) {
  const int64_t V = c.vocab_size, d = c.hidden_size, H = c.num_attention_heads,
                KV = c.num_key_value_heads, hd = c.head_dim, E = c.num_local_experts,
                I = c.intermediate_size;
  std::vector<HfTensor> t;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    t.push_back({std::move(name), std::move(shape), {}});
  };
  add("model.embed_tokens.weight", {V, d});
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const std::string p = fmt::format("model.layers.{}.", l);
    for (auto [name, rows] :
         {std::pair{"q_proj", H * hd}, {"k_proj", KV * hd}, {"v_proj", KV * hd}}) {
      add(p + "self_attn." + name + ".weight", {rows, d});
      if (c.attention_bias) add(p + "self_attn." + name + ".bias", {rows});
    }
    add(p + "self_attn.o_proj.weight", {d, H * hd});
    if (c.attention_bias) add(p + "self_attn.o_proj.bias", {d});
    add(p + "self_attn.sinks", {H});
    add(p + "mlp.router.weight", {E, d});
    add(p + "mlp.router.bias", {E});
    add(p + "mlp.experts.gate_up_proj", {E, d, 2 * I});  // gate, up interleaved on the last axis
    add(p + "mlp.experts.gate_up_proj_bias", {E, 2 * I});
    add(p + "mlp.experts.down_proj", {E, I, d});
    add(p + "mlp.experts.down_proj_bias", {E, d});
    add(p + "input_layernorm.weight", {d});
    add(p + "post_attention_layernorm.weight", {d});
  }
  add("model.norm.weight", {d});
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, d});
  return t;
}

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// GptOss tensors a plain moelab model may not hold, synthesised so that the function is the
// same: sinks of -inf (a softmax column of weight exactly 0), a router that always picks expert
// 0 alone (weight 0, bias 0 for it and -inf for the rest; with one expert any router gives it
// weight 1), and experts beyond the first of a dense layer as zeros (never weighted).
void synthesise(HfTensor& t, const std::vector<float>* ours) {
  const size_t n = size_t(numel(t.shape));
  t.data.assign(n, 0.f);
  if (t.name.ends_with("self_attn.sinks")) {
    std::fill(t.data.begin(), t.data.end(), kNegInf);
  } else if (t.name.ends_with("mlp.router.bias")) {
    std::fill(t.data.begin() + 1, t.data.end(), kNegInf);
  } else if (t.name.ends_with("mlp.router.weight")) {
  } else if (t.name.find(".mlp.experts.") != std::string::npos && ours && n % ours->size() == 0) {
    std::copy(ours->begin(), ours->end(), t.data.begin());  // expert 0 is the layer's FFN
  } else {
    fail(fmt::format("export hf: no moelab tensor for '{}'", t.name));
  }
}

}  // namespace

std::string hf_nonzero_balance_bias(const Model<float>& m) {
  for (const TensorView& v : m.layout.tensors) {
    if (!v.name.ends_with("router.balance_bias")) {
      continue;
    }
    const auto values = std::span(m.params).subspan(size_t(v.offset), size_t(v.numel));
    if (std::any_of(values.begin(), values.end(), [](float x) { return x != 0.f; })) {
      return v.name;
    }
  }
  return "";
}

std::vector<HfTensor> hf_tensors(const Model<float>& m) {
  std::vector<HfTensor> out = hf_layout(m.cfg);
  if (const std::string name = hf_nonzero_balance_bias(m); !name.empty()) {
    fail(
        fmt::format("export hf: 'router_balance': '{}' is not zero, and GptOss's router has no "
                    "bias for the choice alone",
                    name));
  }
  for (HfTensor& t : out) {
    const TensorView* v = m.layout.find(t.name);
    std::vector<float> ours;
    if (v) ours.assign(m.params.begin() + v->offset, m.params.begin() + v->offset + v->numel);
    if (v && v->numel == numel(t.shape))
      t.data = std::move(ours);
    else
      synthesise(t, v ? &ours : nullptr);
  }
  return out;
}

namespace {

bool all_of_value(const std::vector<float>& v, size_t begin, float x) {
  return std::all_of(v.begin() + long(begin), v.end(), [x](float f) { return f == x; });
}

// A file tensor the model does not hold is only accepted where dropping it leaves the function
// as it is: a tied head, sinks of -inf, the router of a one-expert layer, or a router that picks
// expert 0 alone (and the experts it never picks).
void check_dropped(const HfTensor& t, const Model<float>& m, std::string_view src) {
  const ModelConfig& c = m.cfg;
  auto bad = [&](std::string_view why) {
    fail(fmt::format("{}: tensor '{}' {}", src, t.name, why));
  };
  if (t.name == "lm_head.weight" && c.tie_word_embeddings) return;
  if (t.name.ends_with("self_attn.sinks")) {
    if (!all_of_value(t.data, 0, kNegInf))
      bad("is not -inf, but the config ('moelab.attention_sinks') has no sinks");
    return;
  }
  if (t.name.find(".mlp.router.") != std::string::npos) {
    const bool one = t.shape.size() >= 1 && t.shape[0] == 1;
    if (one) return;
    if (t.name.ends_with("router.weight") && !all_of_value(t.data, 0, 0.f))
      bad("is not zero in a layer moelab keeps dense ('moelab.moe_layers')");
    if (t.name.ends_with("router.bias") &&
        (t.data.empty() || t.data[0] != 0.f || !all_of_value(t.data, 1, kNegInf)))
      bad("is not [0, -inf, ...] in a layer moelab keeps dense ('moelab.moe_layers')");
    return;
  }
  bad("is not part of the model the config describes");
}

}  // namespace

void hf_tensors_load(const std::map<std::string, HfTensor>& t, Model<float>& m,
                     std::string_view src) {
  std::set<std::string> used;
  for (const TensorView& v : m.layout.tensors) {
    if (v.name.ends_with("router.balance_bias")) continue;  // starts at zero
    const auto it = t.find(v.name);
    if (it == t.end()) fail(fmt::format("{}: tensor '{}' is missing", src, v.name));
    const HfTensor& h = it->second;
    // A dense layer of an MoE (moelab.moe_layers) is expert 0 of the file's [E, ...] tensor.
    const bool first = v.name.find(".mlp.experts.") != std::string::npos && !h.shape.empty() &&
                       h.shape[0] >= 1 && v.shape.size() == h.shape.size() && v.shape[0] == 1 &&
                       std::equal(v.shape.begin() + 1, v.shape.end(), h.shape.begin() + 1);
    if (h.shape != v.shape && !first)
      fail(fmt::format("{}: tensor '{}' has shape {}, the config needs {}", src, v.name,
                       fmt::join(h.shape, "x"), fmt::join(v.shape, "x")));
    const auto begin = h.data.begin(), end = begin + v.numel;
    if (!std::all_of(begin, end, [](float f) { return std::isfinite(f); }))
      fail(fmt::format("{}: tensor '{}' has values that are not finite", src, v.name));
    std::copy(begin, end, m.params.begin() + v.offset);
    used.insert(v.name);
  }
  for (const auto& [name, h] : t) {
    if (used.contains(name)) continue;
    check_dropped(h, m, src);
  }
  // the experts of a dense layer beyond the first: never picked (router checked above)
}

// ----------------------------------------------------------------------------
// merging into a plain model

namespace {

// A DeRS model's experts rebuilt as full ones (base + delta, low-rank deltas at their scale);
// every other tensor copied by name.
std::unique_ptr<Model<float>> ders_rebuild(const Model<float>& m) {
  ModelConfig pc = m.cfg;
  pc.ders = {};
  auto out = std::make_unique<Model<float>>(pc, 1, 1);
  for (const TensorView& v : out->layout.tensors)
    if (const TensorView* s = m.layout.find(v.name); s && s->numel == v.numel)
      std::copy_n(m.params.begin() + s->offset, v.numel, out->params.begin() + v.offset);
  std::vector<float> wbuf(size_t(std::max<int64_t>(m.rebuild_size(), 1)));
  const Ctx<float> ctx = m.ctx_infer(wbuf.data());
  for (size_t l = 0; l < m.blocks().ffn.size(); l++) {
    const FfnParams& f = m.blocks().ffn[l];
    const FfnParams& g = out->blocks().ffn[l];
    for (auto [w, to] : {std::pair{&f.up, &g.up}, {&f.down, &g.down}}) {
      if (!w->shared) continue;
      for (int64_t e = 0; e < w->experts; e++)
        weight_expert_dense(ctx, *w, e, out->params.data() + to->w_at(e));
    }
  }
  return out;
}

}  // namespace

HfPlain hf_plain(const Model<float>& m) {
  const ModelConfig& c = m.cfg;
  HfPlain p;
  if (c.moe_ct.experts > 0)
    fail("export hf: 'moe_ct' (MoE-CT's gated mix of the FFN and new experts) has no GptOss form");
  const bool lora = c.lora.rank > 0;  // (lowrank DeRS deltas ride on adapter slots too)
  if (lora && c.ders.on())
    fail("export hf: 'lora' together with 'ders' is not merged (export --merge-lora first)");
  if (lora) {
    p.model = std::make_unique<Model<float>>(lora_merged_config(c), 1, 1);
    lora_merge(m, *p.model);
    p.merged["lora"] = config_to_json(c)["lora"];
  } else if (c.ders.on()) {
    p.model = ders_rebuild(m);
    p.merged["ders"] = ders_spelling(c.ders);
  }
  return p;
}

}  // namespace moelab
