// llama.cpp's gpt-oss GGUF (gguf.hpp): hyperparameter keys, the tensor mapping from and to the
// Hugging Face GptOss tensors, the embedded tokenizer, and the export and import commands.
#include "convert/gguf.hpp"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "convert/checkpoint.hpp"
#include "convert/hf.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"
#include "data/dataset.hpp"
#include "model/model.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using K = GgufValue::Kind;
constexpr const char* kArch = "gpt-oss";
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

GgufValue vu32(int64_t x) {
  GgufValue v;
  v.kind = K::U32;
  v.uint_value = uint64_t(x);
  return v;
}
GgufValue vf32(double x) {
  GgufValue v;
  v.kind = K::F32;
  v.float_value = x;
  return v;
}
GgufValue vstr(std::string s) {
  GgufValue v;
  v.kind = K::Str;
  v.text = std::move(s);
  return v;
}
GgufValue vbool(bool b) {
  GgufValue v;
  v.kind = K::Bool;
  v.bool_value = b;
  return v;
}

// ----------------------------------------------------------------------------
// hyperparameters

// Whether any layer of the config slides.
bool any_sliding(const ModelConfig& c) {
  return c.sliding_window > 0 &&
         std::find(c.layer_sliding.begin(), c.layer_sliding.end(), true) != c.layer_sliding.end();
}

// llama.cpp's sliding-window pattern (llama_hparams::set_swa_pattern): layer il slides when
// il % p < p - 1, p = 0 makes every layer slide, p = 1 none. The p that gives moelab's layer
// types, or -1. Without sliding layers: 0, every layer sliding over a window of the whole
// context (llama.cpp's KV cache asserts that a gpt-oss layer slides; a window of
// max_position_embeddings keys hides none of the model's positions).
int64_t swa_period(const ModelConfig& c) {
  const int64_t L = c.num_hidden_layers;
  if (!any_sliding(c)) {
    return 0;
  }
  for (int64_t p = 0; p <= L + 1; p++) {
    if (p == 1) {
      continue;
    }
    bool same = true;
    for (int64_t il = 0; il < L; il++) {
      same = same && c.layer_sliding[size_t(il)] == (p == 0 || il % p < p - 1);
    }
    if (same) {
      return p;
    }
  }
  return -1;
}

// ggml_rope_yarn_corr_dim, in float as ggml computes it.
float yarn_corr_dim(int64_t n_dims, int64_t n_ctx_orig, float n_rot, float base) {
  return float(n_dims) * std::log(float(n_ctx_orig) / (n_rot * 2 * float(M_PI))) /
         (2 * std::log(base));
}

// What llama.cpp's gpt-oss graph hard-codes or cannot express, refused with the field's name
// (a plain model: LoRA and DeRS are merged before).
void refuse_inexpressible(const ModelConfig& c) {
  auto refuse = [](std::string_view key, const std::string& why) {
    fail(fmt::format("export gguf: '{}' {}", key, why));
  };
  if (c.moe_ct.experts > 0) {
    refuse("moe_ct", "(MoE-CT's gated mix of the FFN and new experts) has no gpt-oss form");
  }
  if (c.swiglu_alpha != kHfSwigluAlpha || c.swiglu_limit != kHfSwigluLimit) {
    refuse(c.swiglu_alpha != kHfSwigluAlpha ? "swiglu_alpha" : "swiglu_limit",
           fmt::format("is {}; llama.cpp's gpt-oss graph hard-codes alpha {} and limit {}",
                       c.swiglu_alpha != kHfSwigluAlpha ? c.swiglu_alpha : c.swiglu_limit,
                       kHfSwigluAlpha, kHfSwigluLimit));
  }
  if (swa_period(c) < 0) {
    refuse("layer_types",
           "is no pattern llama.cpp writes (layer i slides when i % p < p - 1, for one p)");
  }
  if (c.yarn_factor > 1.0) {
    if (c.yarn_beta_fast != 32.0 || c.yarn_beta_slow != 1.0) {
      refuse("rope_scaling.beta_fast",
             fmt::format("/beta_slow are {}/{}; llama.cpp's gpt-oss reads no such keys and uses "
                         "32/1",
                         c.yarn_beta_fast, c.yarn_beta_slow));
    }
    const float lo = yarn_corr_dim(c.head_dim, c.yarn_original_context, 32.f, float(c.rope_theta));
    const float hi = yarn_corr_dim(c.head_dim, c.yarn_original_context, 1.f, float(c.rope_theta));
    if (std::floor(lo) != lo || std::ceil(hi) != hi || lo < 0 || hi > float(c.head_dim - 1)) {
      refuse("rope_scaling.factor",
             fmt::format("is {}: llama.cpp rounds the YaRN ramp's ends ({:.4f}, {:.4f}) to "
                         "integers (ggml_rope_yarn_corr_dims), moelab and gpt-oss do not",
                         c.yarn_factor, lo, hi));
    }
  }
}

// The gpt-oss keys llama.cpp reads (llama_model_base::load_hparams and
// llama_model_openai_moe::load_arch_hparams), each in the type its get_key checks.
std::vector<std::pair<std::string, GgufValue>> arch_keys(const ModelConfig& c) {
  const std::string a = kArch;
  const int64_t p = swa_period(c);
  std::vector<std::pair<std::string, GgufValue>> kv = {
      {a + ".context_length", vu32(c.max_position_embeddings)},
      {a + ".embedding_length", vu32(c.hidden_size)},
      {a + ".block_count", vu32(c.num_hidden_layers)},
      {a + ".feed_forward_length", vu32(c.intermediate_size)},
      {a + ".attention.head_count", vu32(c.num_attention_heads)},
      {a + ".attention.head_count_kv", vu32(c.num_key_value_heads)},
      {a + ".attention.key_length", vu32(c.head_dim)},
      {a + ".attention.value_length", vu32(c.head_dim)},
      {a + ".rope.dimension_count", vu32(c.head_dim)},
      {a + ".attention.layer_norm_rms_epsilon", vf32(c.rms_norm_eps)},
      {a + ".rope.freq_base", vf32(c.rope_theta)},
      {a + ".attention.sliding_window",
       vu32(any_sliding(c) ? c.sliding_window : c.max_position_embeddings)},
      {a + ".attention.sliding_window_pattern", vu32(p)},
      {a + ".expert_count", vu32(c.num_local_experts)},
      {a + ".expert_used_count", vu32(c.num_experts_per_tok)},
      {a + ".expert_feed_forward_length", vu32(c.intermediate_size)}};
  if (c.yarn_factor > 1.0) {
    kv.push_back({a + ".rope.scaling.type", vstr("yarn")});
    kv.push_back({a + ".rope.scaling.factor", vf32(c.yarn_factor)});
    kv.push_back({a + ".rope.scaling.original_context_length", vu32(c.yarn_original_context)});
  } else {
    kv.push_back({a + ".rope.scaling.type", vstr("none")});
  }
  return kv;
}

// ----------------------------------------------------------------------------
// tensors: the GptOss tensors renamed and reoriented (convert_hf_to_gguf's GptOssModel)

struct Placed {
  std::string name;
  std::vector<int64_t> ne;
  std::vector<float> data;
};

// [R, C] row-major -> [C, R] row-major, per leading index of `batches` matrices.
std::vector<float> transpose(const std::vector<float>& x, int64_t batches, int64_t R, int64_t C) {
  std::vector<float> y(x.size());
  for (int64_t b = 0; b < batches; b++) {
    for (int64_t r = 0; r < R; r++) {
      for (int64_t col = 0; col < C; col++) {
        y[size_t((b * C + col) * R + r)] = x[size_t((b * R + r) * C + col)];
      }
    }
  }
  return y;
}

// The even (part 0) or odd (part 1) entries of the last axis: gate and up of GptOss's
// interleaved gate_up.
std::vector<float> deinterleave(const std::vector<float>& x, int64_t part) {
  std::vector<float> y(x.size() / 2);
  for (size_t i = 0; i < y.size(); i++) {
    y[i] = x[2 * i + size_t(part)];
  }
  return y;
}

std::vector<Placed> place(const ModelConfig& c, std::map<std::string, HfTensor>& hf) {
  const int64_t V = c.vocab_size, d = c.hidden_size, H = c.num_attention_heads,
                KV = c.num_key_value_heads, hd = c.head_dim, E = c.num_local_experts,
                I = c.intermediate_size;
  std::vector<Placed> out;
  auto take = [&](const std::string& n) {
    auto it = hf.find(n);
    check(it != hf.end(), "gguf place: missing " + n);
    return std::move(it->second.data);
  };
  auto add = [&](std::string name, std::vector<int64_t> ne, std::vector<float> data) {
    out.push_back({std::move(name), std::move(ne), std::move(data)});
  };
  const std::vector<float> embed = take("model.embed_tokens.weight");
  add("token_embd.weight", {d, V}, embed);
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const std::string p = fmt::format("model.layers.{}.", l), b = fmt::format("blk.{}.", l);
    add(b + "attn_norm.weight", {d}, take(p + "input_layernorm.weight"));
    add(b + "post_attention_norm.weight", {d}, take(p + "post_attention_layernorm.weight"));
    for (auto [ours, theirs, rows] : {std::tuple{"q_proj", "attn_q", H * hd},
                                      {"k_proj", "attn_k", KV * hd},
                                      {"v_proj", "attn_v", KV * hd}}) {
      add(b + theirs + ".weight", {d, rows}, take(p + "self_attn." + ours + ".weight"));
      if (c.attention_bias) {
        add(b + theirs + ".bias", {rows}, take(p + "self_attn." + ours + ".bias"));
      }
    }
    add(b + "attn_output.weight", {H * hd, d}, take(p + "self_attn.o_proj.weight"));
    // llama.cpp requires the output bias: zeros are the same function
    add(b + "attn_output.bias", {d},
        c.attention_bias ? take(p + "self_attn.o_proj.bias") : std::vector<float>(size_t(d)));
    add(b + "attn_sinks.weight", {H}, take(p + "self_attn.sinks"));
    add(b + "ffn_gate_inp.weight", {d, E}, take(p + "mlp.router.weight"));
    add(b + "ffn_gate_inp.bias", {E}, take(p + "mlp.router.bias"));
    // gate_up [E, d, 2I] (in, out; gate and up interleaved) -> [E, I, d] each
    const std::vector<float> gu = transpose(take(p + "mlp.experts.gate_up_proj"), E, d, 2 * I);
    std::vector<float> gate(gu.size() / 2), up(gu.size() / 2);
    for (int64_t e = 0; e < E; e++) {
      for (int64_t j = 0; j < I; j++) {
        for (int64_t i = 0; i < d; i++) {
          gate[size_t((e * I + j) * d + i)] = gu[size_t((e * 2 * I + 2 * j) * d + i)];
          up[size_t((e * I + j) * d + i)] = gu[size_t((e * 2 * I + 2 * j + 1) * d + i)];
        }
      }
    }
    add(b + "ffn_gate_exps.weight", {d, I, E}, std::move(gate));
    add(b + "ffn_up_exps.weight", {d, I, E}, std::move(up));
    add(b + "ffn_down_exps.weight", {I, d, E},
        transpose(take(p + "mlp.experts.down_proj"), E, I, d));  // [E, I, d] -> [E, d, I]
    const std::vector<float> gub = take(p + "mlp.experts.gate_up_proj_bias");
    add(b + "ffn_gate_exps.bias", {I, E}, deinterleave(gub, 0));
    add(b + "ffn_up_exps.bias", {I, E}, deinterleave(gub, 1));
    add(b + "ffn_down_exps.bias", {d, E}, take(p + "mlp.experts.down_proj_bias"));
  }
  add("output_norm.weight", {d}, take("model.norm.weight"));
  // tied embeddings: llama.cpp's gpt-oss requires `output`, so the embedding is written twice
  add("output.weight", {d, V}, c.tie_word_embeddings ? embed : take("lm_head.weight"));
  return out;
}

// The inverse of place: GptOss tensors by name (all of hf_layout's, o_proj's bias only where the
// config has biases; those dropped must be zero, and a tied head must equal the embedding).
std::map<std::string, HfTensor> unplace(const ModelConfig& c, std::map<std::string, Placed>& g,
                                        std::string_view src) {
  const int64_t d = c.hidden_size, E = c.num_local_experts, I = c.intermediate_size;
  std::map<std::string, HfTensor> hf;
  for (HfTensor& t : hf_layout(c)) {
    hf[t.name] = t;
  }
  auto from = [&](const std::string& n) -> std::vector<float>& {
    auto it = g.find(n);
    if (it == g.end()) {
      fail(fmt::format("{}: tensor '{}' is missing", src, n));
    }
    return it->second.data;
  };
  auto put = [&](const std::string& n, std::vector<float> v) {
    const auto it = hf.find(n);
    check(it != hf.end(), "gguf unplace: no GptOss tensor " + n);
    int64_t numel = 1;
    for (int64_t s : it->second.shape) {
      numel *= s;
    }
    check(int64_t(v.size()) == numel, "gguf unplace: size of " + n);
    it->second.data = std::move(v);
  };
  put("model.embed_tokens.weight", from("token_embd.weight"));
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const std::string p = fmt::format("model.layers.{}.", l), b = fmt::format("blk.{}.", l);
    put(p + "input_layernorm.weight", from(b + "attn_norm.weight"));
    put(p + "post_attention_layernorm.weight", from(b + "post_attention_norm.weight"));
    for (auto [ours, theirs] : {std::pair{"q_proj", "attn_q"},
                                {"k_proj", "attn_k"},
                                {"v_proj", "attn_v"},
                                {"o_proj", "attn_output"}}) {
      const std::string t = b + theirs;
      put(p + "self_attn." + ours + ".weight", from(t + ".weight"));
      if (c.attention_bias) {
        put(p + "self_attn." + ours + ".bias", from(t + ".bias"));
      } else if (g.contains(t + ".bias")) {  // the zero output bias llama.cpp requires
        const auto& z = g[t + ".bias"].data;
        if (!std::all_of(z.begin(), z.end(), [](float f) { return f == 0.f; })) {
          fail(fmt::format("{}: tensor '{}' is not zero, but the config has no attention biases",
                           src, t + ".bias"));
        }
        g.erase(t + ".bias");
      }
    }
    put(p + "self_attn.sinks", from(b + "attn_sinks.weight"));
    put(p + "mlp.router.weight", from(b + "ffn_gate_inp.weight"));
    put(p + "mlp.router.bias", from(b + "ffn_gate_inp.bias"));
    const std::vector<float>&gate = from(b + "ffn_gate_exps.weight"),
          &up = from(b + "ffn_up_exps.weight");
    std::vector<float> gu(size_t(E * 2 * I * d));  // [E, 2I, d], then -> [E, d, 2I]
    for (int64_t e = 0; e < E; e++) {
      for (int64_t j = 0; j < I; j++) {
        for (int64_t i = 0; i < d; i++) {
          gu[size_t((e * 2 * I + 2 * j) * d + i)] = gate[size_t((e * I + j) * d + i)];
          gu[size_t((e * 2 * I + 2 * j + 1) * d + i)] = up[size_t((e * I + j) * d + i)];
        }
      }
    }
    put(p + "mlp.experts.gate_up_proj", transpose(gu, E, 2 * I, d));
    put(p + "mlp.experts.down_proj", transpose(from(b + "ffn_down_exps.weight"), E, d, I));
    const std::vector<float>&gb = from(b + "ffn_gate_exps.bias"),
          &ub = from(b + "ffn_up_exps.bias");
    std::vector<float> gub(gb.size() * 2);
    for (size_t i = 0; i < gb.size(); i++) {
      gub[2 * i] = gb[i];
      gub[2 * i + 1] = ub[i];
    }
    put(p + "mlp.experts.gate_up_proj_bias", std::move(gub));
    put(p + "mlp.experts.down_proj_bias", from(b + "ffn_down_exps.bias"));
  }
  put("model.norm.weight", from("output_norm.weight"));
  if (c.tie_word_embeddings) {
    if (from("output.weight") != from("token_embd.weight")) {
      fail(
          fmt::format("{}: tensor 'output.weight' differs from 'token_embd.weight', but the "
                      "config ties them ('tie_word_embeddings')",
                      src));
    }
  } else {
    put("lm_head.weight", from("output.weight"));
  }
  for (auto it = hf.begin(); it != hf.end();) {
    it = it->second.data.empty() ? hf.erase(it) : std::next(it);
  }
  return hf;
}

// ----------------------------------------------------------------------------
// the tokenizer: a SentencePiece model as llama.cpp's `llama` (SPM) tokenizer

// The few fields of sentencepiece's ModelProto that llama.cpp needs, read from the serialized
// model (the library exposes no piece types beyond control/unknown/unused/byte, nor the
// normalizer spec): protobuf wire format, fields as sentencepiece_model.proto numbers them.
struct SpmProto {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;  // NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
  int64_t model_type = 1;      // UNIGRAM 1, BPE 2, WORD 3, CHAR 4
  bool add_dummy_prefix = true, remove_extra_whitespaces = true;
  std::string normalizer = "nmt_nfkc";
};

class Proto {
 public:
  Proto(std::string_view s, const std::string& src) : s_(s), src_(src) {}
  bool done() const { return p_ >= s_.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (done()) {
        bad();
      }
      const uint8_t b = uint8_t(s_[p_++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) {
        return v;
      }
    }
    bad();
  }
  // (field, wire type); the value follows
  std::pair<uint64_t, uint64_t> key() {
    const uint64_t k = varint();
    return {k >> 3, k & 7};
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > s_.size() - p_) {
      bad();
    }
    const std::string_view v = s_.substr(p_, n);
    p_ += n;
    return v;
  }
  float fixed32() {
    if (s_.size() - p_ < 4) {
      bad();
    }
    float f;
    std::memcpy(&f, s_.data() + p_, 4);
    p_ += 4;
    return f;
  }
  void skip(uint64_t wire) {
    if (wire == 0) {
      varint();
    } else if (wire == 2) {
      bytes();
    } else if (wire == 5) {
      fixed32();
    } else if (wire == 1 && s_.size() - p_ >= 8) {
      p_ += 8;
    } else {
      bad();
    }
  }
  [[noreturn]] void bad() const { fail(fmt::format("{}: not a SentencePiece model", src_)); }

 private:
  std::string_view s_;
  const std::string& src_;
  size_t p_ = 0;
};

SpmProto spm_parse(const std::string& serialized, const std::string& src) {
  SpmProto m;
  Proto top(serialized, src);
  while (!top.done()) {
    const auto [field, wire] = top.key();
    if (wire != 2) {
      top.skip(wire);
      continue;
    }
    Proto sub(top.bytes(), src);
    if (field == 1) {  // SentencePiece {1 piece, 2 score, 3 type}
      std::string piece;
      float score = 0;
      int32_t type = 1;
      while (!sub.done()) {
        const auto [f, w] = sub.key();
        if (f == 1 && w == 2) {
          piece = std::string(sub.bytes());
        } else if (f == 2 && w == 5) {
          score = sub.fixed32();
        } else if (f == 3 && w == 0) {
          type = int32_t(sub.varint());
        } else {
          sub.skip(w);
        }
      }
      m.pieces.push_back(std::move(piece));
      m.scores.push_back(score);
      m.types.push_back(type);
    } else if (field == 2) {  // TrainerSpec {3 model_type}
      while (!sub.done()) {
        const auto [f, w] = sub.key();
        if (f == 3 && w == 0) {
          m.model_type = int64_t(sub.varint());
        } else {
          sub.skip(w);
        }
      }
    } else if (field == 3) {  // NormalizerSpec {1 name, 3 add_dummy_prefix, 4 remove_extra_ws}
      while (!sub.done()) {
        const auto [f, w] = sub.key();
        if (f == 1 && w == 2) {
          m.normalizer = std::string(sub.bytes());
        } else if (f == 3 && w == 0) {
          m.add_dummy_prefix = sub.varint() != 0;
        } else if (f == 4 && w == 0) {
          m.remove_extra_whitespaces = sub.varint() != 0;
        } else {
          sub.skip(w);
        }
      }
    }
  }
  return m;
}

std::string tokenizer_keys(const std::string& model_file, int64_t vocab,
                           std::vector<std::pair<std::string, GgufValue>>& kv) {
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load(model_file).ok()) {
    fail(fmt::format("{}: not a SentencePiece model", model_file));
  }
  const SpmProto m = spm_parse(sp.serialized_model_proto(), model_file);
  if (m.model_type != 2) {
    fail(
        fmt::format("export gguf: {}: SentencePiece model_type {} ({}): llama.cpp's `llama` "
                    "tokenizer merges pieces by score as BPE does, so only BPE models are written",
                    model_file, m.model_type, m.model_type == 1 ? "unigram" : "not BPE"));
  }
  const int64_t pieces = int64_t(m.pieces.size());
  if (vocab < pieces) {
    fail(fmt::format("export gguf: the model's vocab_size {} is below the tokenizer's {} ({})",
                     vocab, pieces, model_file));
  }
  GgufValue toks, scores, types;
  toks.kind = K::ArrStr;
  toks.strs = m.pieces;
  scores.kind = K::ArrF32;
  scores.f32s = m.scores;
  types.kind = K::ArrI32;
  types.i32s = m.types;
  // ids past the tokenizer (a vocab_size padded beyond its pieces): [PADn] of type unused,
  // score 0, as the tiktoken vocabulary pads; llama.cpp needs a token for every row
  for (int64_t id = pieces; id < vocab; id++) {
    toks.strs.push_back(fmt::format("[PAD{}]", id));
    scores.f32s.push_back(0.f);
    types.i32s.push_back(5);
  }
  kv.push_back({"tokenizer.ggml.model", vstr("llama")});
  kv.push_back({"tokenizer.ggml.tokens", toks});
  kv.push_back({"tokenizer.ggml.scores", scores});
  kv.push_back({"tokenizer.ggml.token_type", types});
  for (auto [key, id] : {std::pair{"bos", sp.bos_id()},
                         {"eos", sp.eos_id()},
                         {"unknown", sp.unk_id()},
                         {"padding", sp.pad_id()}}) {
    if (id >= 0) {
      kv.push_back({fmt::format("tokenizer.ggml.{}_token_id", key), vu32(id)});
    }
  }
  kv.push_back({"tokenizer.ggml.add_bos_token", vbool(false)});  // moelab's encode adds none
  kv.push_back({"tokenizer.ggml.add_eos_token", vbool(false)});
  kv.push_back({"tokenizer.ggml.add_space_prefix", vbool(m.add_dummy_prefix)});
  const std::string padded =
      vocab > pieces ? fmt::format(" and {} [PADn] up to vocab_size {}", vocab - pieces, vocab)
                     : "";
  return fmt::format(
      "SentencePiece BPE {} as llama.cpp's llama tokenizer ({} pieces{}, "
      "add_space_prefix {}, normalizer {} not applied by llama.cpp)",
      model_file, pieces, padded, m.add_dummy_prefix, m.normalizer);
}

// ----------------------------------------------------------------------------
// storage

GgmlType storage_type(const std::string& dtype, const Placed& t, int64_t& fallbacks) {
  // as llama-quantize: matrices named *.weight convert, the router stays F32 (llama-quantize
  // keeps ffn_gate_inp), and norms, biases and sinks stay F32
  const bool matrix = t.ne.size() >= 2 && t.name.ends_with(".weight") &&
                      t.name.find("ffn_gate_inp") == std::string::npos;
  if (!matrix || dtype == "f32") {
    return GgmlType::F32;
  }
  if (dtype == "f16") {
    return GgmlType::F16;
  }
  if (dtype == "bf16") {
    return GgmlType::BF16;
  }
  if (t.ne[0] % kQ8Block == 0) {
    return GgmlType::Q8_0;
  }
  fallbacks++;  // rows not whole Q8_0 blocks: F16, as llama-quantize falls back
  return GgmlType::F16;
}

GgufTensor store(const Placed& t, GgmlType type) {
  GgufTensor g{t.name, t.ne, type, {}};
  if (type == GgmlType::F32) {
    const auto* p = reinterpret_cast<const uint8_t*>(t.data.data());
    g.bytes.assign(p, p + t.data.size() * 4);
  } else if (type == GgmlType::Q8_0) {
    gguf_quantize_q8_0(t.data, g.bytes);
  } else {
    const std::vector<uint16_t> h =
        safetensors_half(type == GgmlType::BF16 ? DType::BF16 : DType::F16, t.data);
    const auto* p = reinterpret_cast<const uint8_t*>(h.data());
    g.bytes.assign(p, p + h.size() * 2);
  }
  return g;
}

const char* type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return "f32";
    case GgmlType::F16:
      return "f16";
    case GgmlType::BF16:
      return "bf16";
    case GgmlType::Q8_0:
      return "q8_0";
  }
  return "?";
}

// ----------------------------------------------------------------------------
// reference log-probs, to check the file against llama.cpp

// For each prompt line: its token ids (OUT, JSON) and the checkpoint's model's log-softmax rows
// (OUT.f32: float32 [rows, V], the prompts' rows one after another; row t of a prompt is the next
// token's distribution after its tokens 0..t; "row" in the JSON is the prompt's first). The model
// is the one before any merge, so that the comparison also checks the merging.
void write_reference(const Model<float>& m, const Tokenizer& tok, const std::string& prompts,
                     const std::string& out) {
  std::ifstream f(prompts);
  if (!f) {
    fail(fmt::format("--prompts {}: cannot read", prompts));
  }
  const int64_t V = m.cfg.vocab_size;
  json j = {{"logprobs_file", fs::path(out).filename().string() + ".f32"},
            {"vocab", V},
            {"prompts", json::array()}};
  std::vector<float> rows;  // [rows, V]
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) {
      continue;
    }
    const std::vector<int32_t> ids = tok.encode(line);
    const int64_t T = int64_t(ids.size());
    if (T == 0 || T > m.cfg.max_position_embeddings) {
      fail(fmt::format("--prompts {}: '{}' has {} tokens", prompts, line, T));
    }
    Model<float> mm(m.cfg, 1, T);
    std::copy(m.params.begin(), m.params.end(), mm.params.begin());
    mm.forward(ids, ids);
    const std::span<const float> lg = mm.logits();
    j["prompts"].push_back({{"text", line}, {"ids", ids}, {"row", rows.size() / size_t(V)}});
    for (int64_t t = 0; t < T; t++) {
      const float* r = lg.data() + t * V;
      double mx = *std::max_element(r, r + V), s = 0;
      for (int64_t v = 0; v < V; v++) {
        s += std::exp(double(r[v]) - mx);
      }
      for (int64_t v = 0; v < V; v++) {
        rows.push_back(float(double(r[v]) - mx - std::log(s)));
      }
    }
  }
  file_write_atomic(out + ".f32", std::string_view(reinterpret_cast<const char*>(rows.data()),
                                                   rows.size() * sizeof(float)));
  file_write_atomic(out, j.dump());
}

}  // namespace

// ----------------------------------------------------------------------------
// export and import

namespace {

// The refusals that name a field before anything is read, merged or written (merging changes
// nothing they look at).
void refuse_config(const ModelConfig& c) {
  if (c.lora.rank > 0 && c.ders.on()) {
    fail("export gguf: 'lora' together with 'ders' is not merged (export --merge-lora first)");
  }
  refuse_inexpressible(c);
}

// The checkpoint's model as a plain one (LoRA and DeRS merged), or a one-line refusal.
const Model<float>* plain_model(const Model<float>& from, HfPlain& plain) {
  plain = hf_plain(from);
  const Model<float>& m = plain.model ? *plain.model : from;
  refuse_inexpressible(m.cfg);
  if (const std::string name = hf_nonzero_balance_bias(m); !name.empty()) {
    fail(
        fmt::format("export gguf: 'router_balance': '{}' is not zero, and llama.cpp's gpt-oss "
                    "router has no bias for the choice alone",
                    name));
  }
  return &m;
}

// The data folder's tokenizer file, after refusing in one line what the export does not write:
// tiktoken encodings other than o200k's (llama.cpp's gpt-4o pre-tokenizer is their pattern).
std::string tokenizer_file(const DataDir& d, const std::string& data) {
  const json& t = d.manifest->at("tokenizer");
  if (t.at("kind") == "tiktoken") {
    const std::string enc = t.value("encoding", std::string("?"));
    if (enc != "o200k_base" && enc != "o200k_harmony") {
      fail(
          fmt::format("export gguf: {}: tiktoken encoding '{}' is not written (only o200k_base "
                      "and o200k_harmony, whose pattern is llama.cpp's gpt-4o pre-tokenizer)",
                      data, enc));
    }
  }
  return (fs::path(data) / t.at("file").get<std::string>()).string();
}

// A tiktoken o200k encoding as llama.cpp's BPE tokenizer; what was written, in words.
std::string tiktoken_keys(const DataDir& d, const std::string& file, int64_t vocab,
                          std::vector<std::pair<std::string, GgufValue>>& kv) {
  const std::string enc = d.manifest->at("tokenizer").at("encoding").get<std::string>();
  const TiktokenSpec spec = tiktoken_spec(enc);
  GgufBpeVocab v = gguf_bpe_from_tiktoken(file, spec, vocab);
  GgufValue toks, types, merges;
  toks.kind = K::ArrStr;
  toks.strs = std::move(v.tokens);
  types.kind = K::ArrI32;
  types.i32s = std::move(v.types);
  merges.kind = K::ArrStr;
  merges.strs = std::move(v.merges);
  const size_t n_merges = merges.strs.size();
  kv.push_back({"tokenizer.ggml.model", vstr("gpt2")});
  kv.push_back({"tokenizer.ggml.pre", vstr("gpt-4o")});
  kv.push_back({"tokenizer.ggml.tokens", std::move(toks)});
  kv.push_back({"tokenizer.ggml.token_type", std::move(types)});
  kv.push_back({"tokenizer.ggml.merges", std::move(merges)});
  const auto bos = spec.special.find("<|startoftext|>");
  kv.push_back(
      {"tokenizer.ggml.bos_token_id", vu32(bos != spec.special.end() ? bos->second : d.eot)});
  kv.push_back({"tokenizer.ggml.eos_token_id", vu32(d.eot)});
  kv.push_back({"tokenizer.ggml.add_bos_token", vbool(false)});  // moelab's encode adds none
  kv.push_back({"tokenizer.ggml.add_eos_token", vbool(false)});
  return fmt::format(
      "tiktoken {} as llama.cpp's BPE (gpt2, pre-tokenizer gpt-4o; {} ids, {} "
      "merges recovered from the ranks, {} specials as control)",
      enc, vocab, n_merges, spec.special.size());
}

int64_t file_type(const std::string& dtype) {
  // llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32
  return dtype == "f32" ? 0 : dtype == "f16" ? 1 : dtype == "q8_0" ? 7 : 32;
}

std::vector<Placed> placed_of(const Model<float>& m) {
  std::map<std::string, HfTensor> hf;
  for (HfTensor& t : hf_tensors(m)) {
    hf[t.name] = std::move(t);
  }
  return place(m.cfg, hf);
}

}  // namespace

GgufExportReport gguf_export(const GgufExportOptions& o) {
  if (o.dtype != "f32" && o.dtype != "f16" && o.dtype != "bf16" && o.dtype != "q8_0") {
    fail(fmt::format("--dtype {}: must be f32, f16, bf16 or q8_0", o.dtype));
  }
  if (o.reference.empty() != o.prompts.empty()) {
    fail("--reference and --prompts go together (the file to write, the prompts it holds)");
  }
  std::error_code ec;
  if (fs::exists(o.out, ec) || fs::is_symlink(o.out, ec)) {
    fail(fmt::format("--out {}: already exists (export never replaces a file)", o.out));
  }
  const ModelConfig cfg = checkpoint_export_begin(o.checkpoint, o.out);
  refuse_config(cfg);  // before reading any weights
  Model<float> from(cfg, 1, 1);
  const json state = checkpoint_load_model(o.checkpoint, from);
  HfPlain plain;
  const Model<float>& m = *plain_model(from, plain);
  if (o.data.empty()) {
    fail(
        "export gguf: no tokenizer: give --data (the run names no data folder), llama.cpp "
        "needs one in the file");
  }
  const DataDir d = data_open(o.data);
  const std::string tok_file = tokenizer_file(d, o.data);
  checkpoint_check_tokenizer(o.checkpoint, state, d.fingerprint, o.data);

  GgufFile f;
  f.kv.push_back({"general.architecture", vstr(kArch)});
  f.kv.push_back({"general.name", vstr(fs::path(o.checkpoint).lexically_normal().string())});
  f.kv.push_back({"general.file_type", vu32(file_type(o.dtype))});
  for (auto& kv : arch_keys(m.cfg)) {
    f.kv.push_back(std::move(kv));
  }
  GgufExportReport r;
  r.tokenizer = d.manifest->at("tokenizer").at("kind") == "tiktoken"
                    ? tiktoken_keys(d, tok_file, m.cfg.vocab_size, f.kv)
                    : tokenizer_keys(tok_file, m.cfg.vocab_size, f.kv);
  f.kv.push_back({"moelab.config", vstr(config_to_json(m.cfg).dump())});
  f.kv.push_back({"moelab.tokenizer_fingerprint", vstr(std::to_string(d.fingerprint))});
  if (!plain.merged.empty()) {
    f.kv.push_back({"moelab.merged", vstr(plain.merged.dump())});
  }
  r.merged = plain.merged;

  int64_t fallbacks = 0;
  for (const Placed& t : placed_of(m)) {
    const GgmlType ty = storage_type(o.dtype, t, fallbacks);
    f.tensors.push_back(store(t, ty));
    r.types[type_name(ty)]++;
  }
  if (!o.reference.empty()) {
    write_reference(from, *d.tokenizer, o.prompts, o.reference);
  }
  gguf_write(o.out, f);
  r.tensors = int64_t(f.tensors.size());
  r.bytes = int64_t(fs::file_size(o.out));
  return r;
}

namespace {

// The function-relevant keys of the file must be those the config gives (a file edited by hand
// would otherwise load here as one model and in llama.cpp as another).
void check_keys(const GgufFile& f, const ModelConfig& c, const std::string& src) {
  for (const auto& [key, want] : arch_keys(c)) {
    const GgufValue* v = f.find(key);
    const bool same = v && v->kind == want.kind && v->uint_value == want.uint_value &&
                      v->text == want.text && float(v->float_value) == float(want.float_value);
    if (!same) {
      fail(fmt::format("{}: key '{}' differs from what its 'moelab.config' gives", src, key));
    }
  }
}

}  // namespace

json gguf_import_state(const GgufFile& f, const std::string& src) {
  json state = {{"step", 0}, {"imported_from", src}};
  if (const GgufValue* fp = f.find("moelab.tokenizer_fingerprint")) {
    // the decimal the export writes; anything else (a sign, spaces, a number past 2^64) is
    // refused rather than read as some other fingerprint
    const std::string& s = fp->text;
    uint64_t value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (fp->kind != K::Str || s.empty() || ec != std::errc() || end != s.data() + s.size()) {
      fail(fmt::format("{}: key 'moelab.tokenizer_fingerprint' is not a decimal fingerprint", src));
    }
    state["tokenizer_fingerprint"] = value;
  }
  if (const GgufValue* mg = f.find("moelab.merged")) {
    json merged = mg->kind == K::Str ? json::parse(mg->text, nullptr, false) : json();
    if (!merged.is_object()) {  // a discarded parse would be written as invalid JSON
      fail(fmt::format("{}: key 'moelab.merged' is not a JSON object", src));
    }
    state["merged"] = std::move(merged);
  }
  return state;
}

GgufImportReport gguf_import(const std::string& file, const std::string& out) {
  std::error_code ec;
  if (fs::exists(out, ec) || fs::is_symlink(out, ec)) {
    fail(fmt::format("--out {}: already exists (import never replaces a folder)", out));
  }
  const GgufFile f = gguf_read(file);
  const GgufValue* arch = f.find("general.architecture");
  if (!arch || arch->kind != K::Str || arch->text != kArch) {
    fail(fmt::format("{}: 'general.architecture' is {}, not \"{}\"", file,
                     arch && arch->kind == K::Str ? "\"" + arch->text + "\"" : "missing", kArch));
  }
  const GgufValue* mc = f.find("moelab.config");
  if (!mc || mc->kind != K::Str) {
    fail(
        fmt::format("{}: no 'moelab.config' key: only files written by moelab export gguf are "
                    "imported",
                    file));
  }
  const json cj = json::parse(mc->text, nullptr, false);
  GgufImportReport r;
  r.config = config_from_json(cj, file + " (moelab.config)");
  check_keys(f, r.config, file);
  const json state = gguf_import_state(f, file);  // before the tensors: refused in one line

  Model<float> m(r.config, 1, 1);
  std::map<std::string, Placed> g;
  for (Placed& t : placed_of(m)) {
    g[t.name] = {t.name, t.ne, {}};
  }
  std::set<std::string> seen;
  for (const GgufTensor& t : f.tensors) {
    auto it = g.find(t.name);
    if (it == g.end()) {
      fail(fmt::format("{}: tensor '{}' is not part of the model the config describes", file,
                       t.name));
    }
    if (t.ne != it->second.ne) {
      fail(fmt::format("{}: tensor '{}' has shape {}, the config needs {}", file, t.name,
                       fmt::join(t.ne, "x"), fmt::join(it->second.ne, "x")));
    }
    int64_t n = 1;
    for (int64_t x : t.ne) {
      n *= x;
    }
    it->second.data = gguf_dequantize(t.type, t.bytes, n);
    r.types[type_name(t.type)]++;
    seen.insert(t.name);
  }
  for (const auto& [name, _] : g) {
    if (!seen.contains(name)) {
      fail(fmt::format("{}: tensor '{}' is missing", file, name));
    }
  }
  hf_tensors_load(unplace(r.config, g, file), m, file);

  checkpoint_write_model(out, m, state);
  r.tensors = int64_t(f.tensors.size());
  return r;
}

}  // namespace moelab
