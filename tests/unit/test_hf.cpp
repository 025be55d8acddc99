// Hugging Face GptOss interop (convert/hf.*): the name / shape / layout table against
// transformers' modeling_gpt_oss.py, bit-exact f32 round trips, bf16 rounding, the refusals, the
// merges, and a config.json of the real gpt-oss family at small width. And the half floats of
// core/safetensors that its files come in: exact to float, rounded to nearest even from it.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "convert/checkpoint.hpp"
#include "convert/hf.hpp"
#include "core/bf16.hpp"
#include "core/safetensors.hpp"
#include "model/lora.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

namespace moelab {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path temp(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("moelab_hf_" + name);
  fs::remove_all(p);
  return p;
}

// tiny() with what GptOss hard-codes and a YaRN factor equal to max / original positions.
ModelConfig hf_tiny(bool moe) {
  ModelConfig c = test::tiny(moe);
  c.swiglu_limit = kHfSwigluLimit;
  c.max_position_embeddings = 1024;  // YaRN factor 1024 / 256, the ramp's ends inside [0, 5]
  c.yarn_original_context = 256;
  c.yarn_factor = 4.0;
  return c;
}

std::unique_ptr<Model<float>> random_model(const ModelConfig& c, uint64_t seed) {
  auto m = std::make_unique<Model<float>>(c, 1, 8);
  m->init_weights(seed);
  test::jitter(*m, seed + 1);
  return m;
}

// Writes the model as a GptOss file and reads it back into a model of the config that
// config.json gives back.
std::unique_ptr<Model<float>> round_trip(const Model<float>& m, bool bf16, const std::string& tag) {
  const fs::path file = temp(tag + ".safetensors");
  hf_safetensors_write(file.string(), hf_tensors(m), bf16);
  const json cj = json::parse(hf_config_json(m.cfg).dump());
  auto back = std::make_unique<Model<float>>(hf_config_parse(cj, "config.json"), 1, 8);
  hf_tensors_load(hf_safetensors_read(file.string()), *back, file.string());
  fs::remove(file);
  return back;
}

// ----------------------------------------------------------------------------
// the table: names, shapes and layouts as GptOssForCausalLM's modules declare them
// (GptOssAttention: nn.Linear q/k/v/o with bias=attention_bias, sinks [H]; GptOssTopKRouter:
// weight [E, d], bias [E]; GptOssExperts: gate_up_proj [E, d, 2I], gate_up_proj_bias [E, 2I],
// down_proj [E, I, d], down_proj_bias [E, d]; GptOssRMSNorm weight [d]; lm_head [V, d]).

TEST(Hf, LayoutTable) {
  const ModelConfig c = hf_tiny(true);  // V 29, d 16, H 4, KV 2, hd 6, E 4, I 8
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want_layer = {
      {"self_attn.q_proj.weight", {24, 16}},
      {"self_attn.q_proj.bias", {24}},
      {"self_attn.k_proj.weight", {12, 16}},
      {"self_attn.k_proj.bias", {12}},
      {"self_attn.v_proj.weight", {12, 16}},
      {"self_attn.v_proj.bias", {12}},
      {"self_attn.o_proj.weight", {16, 24}},
      {"self_attn.o_proj.bias", {16}},
      {"self_attn.sinks", {4}},
      {"mlp.router.weight", {4, 16}},
      {"mlp.router.bias", {4}},
      {"mlp.experts.gate_up_proj", {4, 16, 16}},
      {"mlp.experts.gate_up_proj_bias", {4, 16}},
      {"mlp.experts.down_proj", {4, 8, 16}},
      {"mlp.experts.down_proj_bias", {4, 16}},
      {"input_layernorm.weight", {16}},
      {"post_attention_layernorm.weight", {16}}};
  std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"model.embed_tokens.weight", {29, 16}}};
  for (int l = 0; l < 2; l++)
    for (const auto& [n, s] : want_layer)
      want.push_back({fmt::format("model.layers.{}.{}", l, n), s});
  want.push_back({"model.norm.weight", {16}});
  want.push_back({"lm_head.weight", {29, 16}});
  const std::vector<HfTensor> got = hf_layout(c);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); i++) {
    EXPECT_EQ(got[i].name, want[i].first);
    EXPECT_EQ(got[i].shape, want[i].second) << want[i].first;
  }
  // Our tensors are stored in these layouts already: same name, same shape in the model.
  Model<float> m(c, 1, 1);
  for (const HfTensor& t : got) {
    const TensorView* v = m.layout.find(t.name);
    ASSERT_NE(v, nullptr) << t.name;
    EXPECT_EQ(v->shape, t.shape) << t.name;
  }
  ModelConfig plain = hf_tiny(false);
  plain.attention_bias = false;
  plain.tie_word_embeddings = true;
  for (const HfTensor& t : hf_layout(plain)) {
    EXPECT_EQ(t.name.find("_proj.bias"), std::string::npos) << t.name;
    EXPECT_NE(t.name, "lm_head.weight");
  }
}

// gate and up interleaved on the last axis: gate_up[..., 2j] is gate j, [..., 2j + 1] up j, as
// transformers slices them (gate_up[..., ::2], gate_up[..., 1::2]). A model whose gate columns
// are zero and up columns not must export zeros at even positions.
TEST(Hf, GateUpInterleaved) {
  auto m = random_model(hf_tiny(true), 3);
  const TensorView* v = m->layout.find("model.layers.0.mlp.experts.gate_up_proj");
  const int64_t I2 = v->shape[2];
  for (int64_t i = 0; i < v->numel; i++)
    if (i % I2 % 2 == 0) m->params[size_t(v->offset + i)] = 0.f;
  for (const HfTensor& t : hf_tensors(*m))
    if (t.name == v->name) {
      for (size_t i = 0; i < t.data.size(); i++)
        EXPECT_EQ(t.data[i] == 0.f, int64_t(i) % I2 % 2 == 0) << i;
    }
}

// ----------------------------------------------------------------------------
// round trips

void expect_round_trip_exact(const ModelConfig& c, const std::string& tag) {
  auto m = random_model(c, 11);
  for (const TensorView& t : m->layout.tensors)  // a balance bias travels only while it is zero
    if (t.name.ends_with("balance_bias")) std::fill_n(m->params.begin() + t.offset, t.numel, 0.f);
  auto back = round_trip(*m, false, tag);
  EXPECT_EQ(config_to_json(back->cfg), config_to_json(c)) << tag;
  ASSERT_EQ(back->layout.tensors.size(), m->layout.tensors.size()) << tag;
  for (size_t i = 0; i < m->layout.tensors.size(); i++)
    EXPECT_EQ(back->layout.tensors[i].name, m->layout.tensors[i].name);
  EXPECT_TRUE(test::same_bits(back->params, m->params)) << tag;
}

TEST(Hf, RoundTripBitExactF32) {
  expect_round_trip_exact(hf_tiny(true), "moe");
  expect_round_trip_exact(hf_tiny(false), "dense");
  ModelConfig plain = hf_tiny(false);  // tied, no sinks, no biases, plain RoPE, no window
  plain.tie_word_embeddings = true;
  plain.attention_sinks = false;
  plain.attention_bias = false;
  plain.yarn_factor = 1.0;
  plain.sliding_window = 0;
  plain.layer_sliding = {false, false};
  expect_round_trip_exact(plain, "plain");
  ModelConfig partial = hf_tiny(true);  // layer 0 dense inside an MoE, top-3
  partial.moe_layers = {1};
  partial.num_experts_per_tok = 3;
  expect_round_trip_exact(partial, "partial");
  ModelConfig one = hf_tiny(false);  // an MoE of one expert keeps its router
  one.ffn_type = FfnKind::Moe;
  expect_round_trip_exact(one, "one_expert");
  ModelConfig bal = hf_tiny(true);
  bal.router_balance.bias_rate = 0.01;
  expect_round_trip_exact(bal, "balance");
}

// The same function after a round trip: logits equal bit for bit.
TEST(Hf, RoundTripSameLogits) {
  ModelConfig partial = hf_tiny(true);
  partial.moe_layers = {0};
  partial.attention_sinks = false;
  auto m = random_model(partial, 5);
  auto back = round_trip(*m, false, "logits");
  const test::Batch b = test::batch(8, partial.vocab_size, 9);
  m->forward(b.tokens, b.targets);
  back->forward(b.tokens, b.targets);
  EXPECT_TRUE(test::same_bits(test::logits_of(*m), test::logits_of(*back)));
}

TEST(Hf, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_from_float(1.0f), 0x3F80);
  EXPECT_EQ(bf16_from_float(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(bf16_from_float(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(bf16_from_float(std::bit_cast<float>(0x3F808001u)), 0x3F81);  // above the tie
  EXPECT_EQ(bf16_from_float(std::bit_cast<float>(0xBF817FFFu)), 0xBF81);  // below the tie, negative
  EXPECT_EQ(bf16_from_float(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(bf16_from_float(std::bit_cast<float>(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_float(bf16_from_float(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_to_float(bf16_from_float(std::bit_cast<float>(0x7FFFFFFFu)))));

  auto m = random_model(hf_tiny(true), 2);
  auto back = round_trip(*m, true, "bf16");
  for (size_t i = 0; i < m->params.size(); i++) {
    const float want = bf16_to_float(bf16_from_float(m->params[i]));
    ASSERT_EQ(std::bit_cast<uint32_t>(back->params[i]), std::bit_cast<uint32_t>(want)) << i;
  }
}

// ----------------------------------------------------------------------------
// what GptOss cannot express

TEST(Hf, RefusesInexpressible) {
  auto err = [](const ModelConfig& c) { return test::error_of([&] { hf_config_json(c); }); };
  ModelConfig c = hf_tiny(true);
  c.swiglu_alpha = 1.5;
  EXPECT_NE(err(c).find("'swiglu_alpha' is 1.5; transformers' GptOss hard-codes 1.702"),
            std::string::npos)
      << err(c);
  c = hf_tiny(true);
  c.swiglu_limit = 1.5;
  EXPECT_NE(err(c).find("'swiglu_limit'"), std::string::npos);
  c = hf_tiny(true);
  c.yarn_factor = 8.0;  // max / original is 4
  EXPECT_NE(err(c).find("'rope_scaling.factor'"), std::string::npos);
  c = hf_tiny(true);
  c.yarn_original_context = 64, c.max_position_embeddings = 256;  // ramp's low end below 0
  EXPECT_NE(err(c).find("'rope_scaling.original_max_position_embeddings'"), std::string::npos);
  c = hf_tiny(true);
  c.moe_ct.experts = 2;
  EXPECT_NE(err(c).find("'moe_ct'"), std::string::npos);

  ModelConfig bal = hf_tiny(true);
  bal.router_balance.bias_rate = 0.1;
  auto m = random_model(bal, 1);  // jitter made the balance bias nonzero
  EXPECT_NE(test::error_of([&] { hf_tensors(*m); }).find("'router_balance'"), std::string::npos);
}

json gpt_oss_small() {
  // openai/gpt-oss-20b's config.json key for key, at small sizes (no quantization_config)
  return json::parse(R"({
    "architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 2, "head_dim": 8, "hidden_act": "silu",
    "hidden_size": 24, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 12,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 4,
    "num_experts_per_tok": 2, "num_hidden_layers": 3, "num_key_value_heads": 2,
    "num_local_experts": 4, "output_router_logits": false, "pad_token_id": 199999,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": false},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 8,
    "swiglu_limit": 7.0, "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0",
    "use_cache": true, "vocab_size": 50})");
}

TEST(Hf, ImportRefusals) {
  auto err = [](const json& j) {
    return test::error_of([&] { hf_config_parse(j, "config.json"); });
  };
  json j = gpt_oss_small();
  j["quantization_config"] = {{"quant_method", "mxfp4"}};
  EXPECT_NE(err(j).find("'quantization_config'"), std::string::npos);
  j = gpt_oss_small();
  j["partial_rotary_factor"] = 0.5;
  EXPECT_NE(err(j).find("'partial_rotary_factor' is not a GptOss key"), std::string::npos);
  j = gpt_oss_small();
  j["rope_scaling"].erase("truncate");
  EXPECT_NE(err(j).find("'rope_scaling.truncate' must be false"), std::string::npos);
  j = gpt_oss_small();
  j["rope_scaling"]["factor"] = 16.0;
  EXPECT_NE(err(j).find("'rope_scaling.factor'"), std::string::npos);
  j = gpt_oss_small();
  j["swiglu_limit"] = 5.0;
  EXPECT_NE(err(j).find("'swiglu_limit' is 5.0"), std::string::npos) << err(j);
  j = gpt_oss_small();
  j["model_type"] = "llama";
  EXPECT_NE(err(j).find("'model_type'"), std::string::npos);
}

// A config.json of the real family at small width, with random bf16 weights written by hand in
// transformers' names: import reads it, and the checkpoint loads like any other.
TEST(Hf, ImportsRealFamilyConfig) {
  const json j = gpt_oss_small();
  const ModelConfig c = hf_config_parse(j, "config.json");
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.num_local_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.layer_sliding, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(c.sliding_window, 8);
  EXPECT_EQ(c.yarn_factor, 32.0);
  EXPECT_EQ(c.yarn_original_context, 4096);
  EXPECT_EQ(c.router_z_loss_coef, 0.0);
  EXPECT_TRUE(c.attention_sinks && c.attention_bias && !c.tie_word_embeddings);

  const fs::path dir = temp("real"), out = temp("real_ckpt");
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << j.dump(2);
  std::vector<HfTensor> t = hf_layout(c);
  uint64_t seed = 1;
  for (HfTensor& x : t) {
    int64_t n = 1;
    for (int64_t s : x.shape) n *= s;
    x.data = test::randn<float>(n, seed++, 0.1);
  }
  hf_safetensors_write((dir / "model.safetensors").string(), t, true);
  const HfImportReport r = hf_import(dir.string(), out.string());
  EXPECT_EQ(r.tensors, int64_t(t.size()));
  Model<float> m(c, 1, 4);
  checkpoint_load_model(out.string(), m);
  const TensorView* v = m.layout.find("model.layers.2.mlp.experts.gate_up_proj");
  ASSERT_NE(v, nullptr);
  for (const HfTensor& x : t)
    if (x.name == v->name) {
      for (int64_t i = 0; i < v->numel; i++)
        ASSERT_EQ(m.params[size_t(v->offset + i)],
                  bf16_to_float(bf16_from_float(x.data[size_t(i)])));
    }
  // a tensor of the wrong shape is one line naming it
  fs::remove_all(out);
  t[1].shape = {t[1].shape[1], t[1].shape[0]};
  hf_safetensors_write((dir / "model.safetensors").string(), t, false);
  EXPECT_NE(test::error_of([&] {
              hf_import(dir.string(), out.string());
            }).find("tensor '" + t[1].name + "' has shape 24x32, the config needs 32x24"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  fs::remove_all(dir);
}

// ----------------------------------------------------------------------------
// merged: LoRA into the weights, DeRS experts rebuilt; the function stays (to rounding)

void expect_same_function(const Model<float>& a, const Model<float>& plain, double tol) {
  const test::Batch b = test::batch(8, a.cfg.vocab_size, 4);
  Model<float> x(a.cfg, 1, 8), y(plain.cfg, 1, 8);
  x.params = a.params, x.index = a.index, x.codes = a.codes;
  y.params = plain.params;
  x.forward(b.tokens, b.targets);
  y.forward(b.tokens, b.targets);
  test::expect_close(test::logits_of(x), test::logits_of(y), tol, tol, "logits");
}

TEST(Hf, MergesLoraAndDers) {
  ModelConfig lc = hf_tiny(true);
  lc.lora = {.rank = 2, .alpha = 4, .targets = {"self_attn\\.q_proj", "mlp\\.experts"}};
  auto lm = random_model(lc, 7);
  HfPlain lp = hf_plain(*lm);
  ASSERT_TRUE(lp.model);
  EXPECT_EQ(lp.model->cfg.lora.rank, 0);
  EXPECT_EQ(lp.merged["lora"]["rank"], 2);
  expect_same_function(*lm, *lp.model, 1e-5);

  ModelConfig dc = hf_tiny(true);
  dc.ders.delta = DeltaKind::LowRank;
  dc.ders.rank = 2;
  auto dm = random_model(dc, 8);
  HfPlain dp = hf_plain(*dm);
  ASSERT_TRUE(dp.model);
  EXPECT_FALSE(dp.model->cfg.ders.on());
  EXPECT_EQ(dp.merged["ders"], "lowrank:2");
  expect_same_function(*dm, *dp.model, 1e-5);
  EXPECT_NO_THROW(hf_config_json(dp.model->cfg));

  auto pm = random_model(hf_tiny(true), 9);
  EXPECT_FALSE(hf_plain(*pm).model);  // nothing to merge
}

// ----------------------------------------------------------------------------
// half floats in core/safetensors

// ----------------------------------------------------------------------------
// half floats in core/safetensors

float from_bits(uint32_t u) {
  return std::bit_cast<float>(u);
}

// Every half float goes to float and back unchanged (the way to float is exact), a NaN stays a
// NaN, and the two infinities are themselves.
TEST(Safetensors, HalfFloatsAreExactInFloat) {
  for (uint32_t h = 0; h <= 0xFFFFu; h++) {
    const float b = bf16_to_float(uint16_t(h)), f = f16_to_float(uint16_t(h));
    const bool bnan = (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0;
    const bool fnan = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
    ASSERT_EQ(std::isnan(b), bnan) << h;
    ASSERT_EQ(std::isnan(f), fnan) << h;
    if (bnan) {
      ASSERT_TRUE(std::isnan(bf16_to_float(bf16_from_float(b)))) << h;
    } else {
      ASSERT_EQ(bf16_from_float(b), h) << h;
    }
    if (fnan) {
      ASSERT_TRUE(std::isnan(f16_to_float(f16_from_float(f)))) << h;
    } else {
      ASSERT_EQ(f16_from_float(f), h) << h;
    }
  }
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.f, -24));  // the least subnormal
  EXPECT_EQ(f16_to_float(0x7BFF), 65504.f);               // the largest finite
  EXPECT_EQ(f16_to_float(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_float(0x7F80), std::numeric_limits<float>::infinity());
}

// float -> F16 rounds to nearest, ties to even: in the normal range, into and out of the
// subnormals, and at the top, where the tie with 65536 goes to inf.
TEST(Safetensors, F16RoundsToNearestEven) {
  EXPECT_EQ(f16_from_float(1.0f), 0x3C00);
  EXPECT_EQ(f16_from_float(1.f + std::ldexp(1.f, -11)), 0x3C00);      // tie, even stays
  EXPECT_EQ(f16_from_float(1.f + 3 * std::ldexp(1.f, -11)), 0x3C02);  // tie, odd rounds up
  EXPECT_EQ(f16_from_float(from_bits(0x3F801001u)), 0x3C01);          // above the tie
  EXPECT_EQ(f16_from_float(-(1.f + std::ldexp(1.f, -11))), 0xBC00);   // negative tie
  EXPECT_EQ(f16_from_float(std::ldexp(1.f, -25)), 0x0000);            // half the least subnormal: 0
  EXPECT_EQ(f16_from_float(from_bits(0x33000001u)), 0x0001);          // just above it
  EXPECT_EQ(f16_from_float(3 * std::ldexp(1.f, -25)), 0x0002);        // tie between 1 and 2 units
  EXPECT_EQ(f16_from_float(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up to the least normal
  EXPECT_EQ(f16_from_float(-std::ldexp(1.f, -30)), 0x8000);     // a negative underflow: -0
  EXPECT_EQ(f16_from_float(65519.f), 0x7BFF);                   // below the top tie
  EXPECT_EQ(f16_from_float(65520.f), 0x7C00);                   // the top tie: inf
  EXPECT_EQ(f16_from_float(1e30f), 0x7C00);
  EXPECT_EQ(f16_from_float(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_TRUE(std::isnan(f16_to_float(f16_from_float(std::nanf("")))));
  EXPECT_TRUE(std::isnan(f16_to_float(f16_from_float(from_bits(0x7F800001u)))));  // signalling
#ifdef __FLT16_MAX__
  // the compiler's own float -> _Float16 (round to nearest even) over floats of every exponent
  uint64_t state = 7;
  for (int i = 0; i < 200000; i++) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float x = from_bits(uint32_t(state >> 32));
    if (std::isnan(x)) continue;
    ASSERT_EQ(f16_from_float(x), std::bit_cast<uint16_t>(static_cast<_Float16>(x))) << x;
  }
#endif
}

// BF16 and F16 tensors through a file: written as their bits, read back as those bits and as
// floats, exactly; a read of moelab's own dtypes refuses them naming the tensor.
TEST(Safetensors, HalfFloatTensorsRoundTrip) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {0.f,   -0.f,     1.f, -2.5f, 65504.f,       std::ldexp(1.f, -24),
                                1e-3f, 3.14159f, inf, -inf,  std::nanf(""), 1e30f};
  const std::vector<uint16_t> b = safetensors_half(DType::BF16, v),
                              f = safetensors_half(DType::F16, v);
  for (size_t i = 0; i < v.size(); i++) {
    EXPECT_EQ(b[i], bf16_from_float(v[i])) << i;
    EXPECT_EQ(f[i], f16_from_float(v[i])) << i;
  }
  const int64_t n = int64_t(v.size());
  const std::vector<TensorRef> refs = {{"b", DType::BF16, {3, n / 3}, std::as_bytes(std::span(b))},
                                       {"f", DType::F16, {n}, std::as_bytes(std::span(f))},
                                       tensor_ref<float>("x", v, {n})};
  const fs::path file = temp("half.safetensors");
  safetensors_write(file.string(), refs);
  const auto back = safetensors_read(file.string(), DTypes::WithHalf);
  ASSERT_EQ(back.at("b").dtype, DType::BF16);
  ASSERT_EQ(back.at("f").dtype, DType::F16);
  EXPECT_EQ(back.at("b").shape, (std::vector<int64_t>{3, n / 3}));
  const auto bb = back.at("b").as<uint16_t>(), fb = back.at("f").as<uint16_t>();
  EXPECT_TRUE(std::equal(bb.begin(), bb.end(), b.begin(), b.end()));
  EXPECT_TRUE(std::equal(fb.begin(), fb.end(), f.begin(), f.end()));
  const std::vector<float> bf = back.at("b").floats(), ff = back.at("f").floats();
  const std::vector<float> xf = back.at("x").floats();
  for (size_t i = 0; i < v.size(); i++) {
    EXPECT_EQ(std::bit_cast<uint32_t>(bf[i]), std::bit_cast<uint32_t>(bf16_to_float(b[i]))) << i;
    EXPECT_EQ(std::bit_cast<uint32_t>(ff[i]), std::bit_cast<uint32_t>(f16_to_float(f[i]))) << i;
    EXPECT_EQ(std::bit_cast<uint32_t>(xf[i]), std::bit_cast<uint32_t>(v[i])) << i;
  }
  EXPECT_EQ(bf[3], -2.5f);  // exact in both
  EXPECT_EQ(ff[4], 65504.f);
  EXPECT_EQ(ff[11], inf);  // beyond F16's range
  EXPECT_TRUE(std::isnan(bf[10]) && std::isnan(ff[10]));
  EXPECT_NE(test::error_of([&] {
              safetensors_read(file.string());
            }).find("tensor 'b': unsupported dtype 'BF16' (F32, F64, I32, I64 or U8)"),
            std::string::npos);
  // the HF reader takes both as float
  const auto hf = hf_safetensors_read(file.string());
  EXPECT_EQ(std::bit_cast<uint32_t>(hf.at("f").data[5]), std::bit_cast<uint32_t>(ff[5]));
  fs::remove(file);
}

}  // namespace
}  // namespace moelab
