// Model config: parsing, validation messages, parameter and FLOPs accounting, iso-MoE.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

using namespace moelab;
using json = nlohmann::json;

namespace {

json small() {
  return {{"vocab_size", 100},        {"hidden_size", 32},        {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 8},
          {"intermediate_size", 64},  {"sliding_window", 16}};
}

std::string error_of(const json& j) {
  try {
    config_from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

ModelConfig gpt_oss(int64_t layers, int64_t experts) {
  json j = {{"vocab_size", 201088},
            {"hidden_size", 2880},
            {"num_hidden_layers", layers},
            {"num_attention_heads", 64},
            {"num_key_value_heads", 8},
            {"head_dim", 64},
            {"num_local_experts", experts},
            {"experts_per_token", 4},
            {"intermediate_size", 2880},
            {"sliding_window", 128},
            {"rope_theta", 150000},
            {"swiglu_limit", 7.0},
            {"architectures", {"GptOssForCausalLM"}},
            {"model_type", "gpt_oss"},
            {"rope_scaling",
             {{"rope_type", "yarn"},
              {"factor", 32.0},
              {"beta_fast", 32.0},
              {"beta_slow", 1.0},
              {"original_max_position_embeddings", 4096},
              {"truncate", false}}},
            {"max_position_embeddings", 131072},
            {"tie_word_embeddings", false}};
  return config_from_json(j, "gpt-oss");
}

}  // namespace

TEST(Config, ValidationNamesTheField) {
  struct Case {
    const char* key;
    json value;
    const char* expect;
  };
  const Case cases[] = {
      {"num_key_value_heads", 3,
       "'num_attention_heads' (4) is not divisible by 'num_key_value_heads' (3)"},
      {"num_experts_per_tok", 3,
       "'num_experts_per_tok' (3) is larger than 'num_local_experts' (1)"},
      {"hidden_size", 0, "'hidden_size' must be positive"},
      {"hidden_size", "big", "'hidden_size' must be an integer"},
      {"head_dim", 7, "'head_dim' must be even"},
      {"ffn_type", "sparse", "'ffn_type' must be \"dense\" or \"moe\""},
      {"colour", 1, "'colour' is not a known key"},
      {"layer_types", json::array({"full_attention"}), "'layer_types' has 1 entries for 2 layers"},
      {"rms_norm_eps", -1.0, "'rms_norm_eps' must be positive"},
      {"attention_sinks", 1, "'attention_sinks' must be true or false"},
      {"rope_scaling", {{"rope_type", "linear"}}, "rope_type' must be \"yarn\""},
  };
  for (const Case& c : cases) {
    json j = small();
    j[c.key] = c.value;
    const std::string msg = error_of(j);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.key << " -> " << msg;
    EXPECT_EQ(msg.rfind("cfg.json: ", 0), 0u) << msg;  // names the file first
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line";
  }
  json j = small();
  j["sliding_window"] = 0;
  j["layer_types"] = {"sliding_attention", "full_attention"};
  EXPECT_NE(error_of(j).find("sliding_window' is 0"), std::string::npos);
  j = small();
  j["num_local_experts"] = 4;
  j["ffn_type"] = "dense";
  EXPECT_NE(error_of(j).find("\"dense\" needs num_local_experts = 1"), std::string::npos);
}

TEST(Config, JsonRoundTripAndDefaults) {
  const ModelConfig c = config_from_json(small(), "x");
  EXPECT_EQ(c.layer_sliding, (std::vector<bool>{true, false}));  // gpt-oss: even layers slide
  EXPECT_FALSE(c.is_moe());
  const ModelConfig d = config_from_json(config_to_json(c), "y");
  EXPECT_EQ(config_to_json(c), config_to_json(d));
  const ModelConfig g = gpt_oss(24, 32);
  EXPECT_TRUE(g.is_moe());  // several experts and no ffn_type: an MoE, as in HF files
  EXPECT_EQ(g.num_experts_per_tok, 4);
  EXPECT_DOUBLE_EQ(g.yarn_factor, 32.0);
  EXPECT_EQ(config_to_json(config_from_json(config_to_json(g), "z")), config_to_json(g));
}

TEST(Config, GptOssParameterCountsMatchSpec) {
  // methods.md §4.1: 116.83B / 5.13B active (120b), 20.91B / 3.61B (20b); per expert 24,891,840.
  const ParamCounts big = config_count(gpt_oss(36, 128));
  EXPECT_EQ(big.per_expert, 24891840);
  EXPECT_NEAR(double(big.total) / 1e9, 116.83, 0.005);
  EXPECT_NEAR(double(big.active) / 1e9, 5.13, 0.005);
  const ParamCounts small20 = config_count(gpt_oss(24, 32));
  EXPECT_NEAR(double(small20.total) / 1e9, 20.91, 0.005);
  EXPECT_NEAR(double(small20.active) / 1e9, 3.61, 0.005);
}

TEST(Config, CountsEqualTheParameterLayout) {
  for (bool moe : {false, true})
    for (bool tied : {false, true})
      for (bool extras : {false, true}) {
        json j = small();
        if (moe) j["num_local_experts"] = 4, j["num_experts_per_tok"] = 2;
        j["tie_word_embeddings"] = tied;
        j["attention_bias"] = extras;
        j["attention_sinks"] = extras;
        const ModelConfig c = config_from_json(j, "x");
        EXPECT_EQ(config_count(c).total, layout_build(c).total) << j.dump();
        for (const char* gate : {"fixed", "scalar", "token"}) {  // MoE-CT on one layer
          json k = j;
          k["moe_ct"] = {{"experts", 3}, {"top_k", 2}, {"gate", gate}, {"layers", {1}}};
          const ModelConfig ct = config_from_json(k, "x");
          EXPECT_EQ(config_count(ct).total, layout_build(ct).total) << k.dump();
        }
        json u = j;  // every other layer an MoE, experts as DeRS deltas
        if (moe) {
          u["moe_layers"] = {1};
          u["ders"] = {{"delta", "lowrank"}, {"rank", 2}};
          const ModelConfig dc = config_from_json(u, "x");
          EXPECT_EQ(config_count(dc).total, layout_build(dc).total) << u.dump();
        }
      }
}

TEST(Config, Spec52FlopsMatchTheClosedForm) {
  // With n_heads * d_head = d, no GQA and d_ffn = 4d the App. C formula (methods.md §4.3) is
  // C_f L d^2 (4 + 2 n_ctx/d + 12 E_active) + R d E L + C_f V d.
  json j = {{"vocab_size", 50432},       {"hidden_size", 512},
            {"num_hidden_layers", 6},    {"num_attention_heads", 8},
            {"num_key_value_heads", 8},  {"head_dim", 64},
            {"intermediate_size", 2048}, {"num_local_experts", 8},
            {"num_experts_per_tok", 2},  {"max_position_embeddings", 2048}};
  const ModelConfig c = config_from_json(j, "x");
  const double d = 512, L = 6, n = 2048, V = 50432, E = 8, k = 2;
  const double want = 6 * L * d * d * (4 + 2 * n / d + 12 * k) + 14 * d * E * L + 6 * V * d;
  EXPECT_NEAR(config_flops(c, 2048).spec52_per_token / want, 1.0, 1e-12);
  // Exact causal count: attention over (n+1)/2 keys on average.
  const double exact =
      6 * (L * (4 * d * d + d * E + k * 12 * d * d) + V * d) + 12 * d * L * (n + 1) / 2;
  EXPECT_NEAR(config_flops(c, 2048).train_per_token / exact, 1.0, 1e-12);
  // The profile's parts: each product's forward, three times over (forward and a backward of
  // twice the work) make the whole count.
  const FlopCounts f = config_flops(c, 2048);
  double parts = 0;
  for (const auto& [name, per_token] : f.forward_parts) parts += 3 * per_token;
  EXPECT_NEAR(parts / f.train_per_token, 1.0, 1e-12);
  ASSERT_EQ(f.forward_parts.size(), 6u);
  EXPECT_EQ(f.forward_parts[4].first, "lm head");
  EXPECT_NEAR(f.forward_parts[4].second, 2 * V * d, 1e-6);
  EXPECT_NEAR(f.forward_parts[3].second, 2 * L * k * 3 * d * 2048, 1e-6);
}

TEST(Config, IsoMoeSplitsTheFfnWidth) {
  json j = small();
  j["intermediate_size"] = 65536;  // methods.md §1.3: 65536 -> 8192 (E=8) -> 1024 (E=64)
  const ModelConfig dense = config_from_json(j, "x");
  const ModelConfig e8 = config_iso_moe(dense, 8, 2), e64 = config_iso_moe(dense, 64, 2);
  EXPECT_EQ(e8.intermediate_size, 8192);
  EXPECT_EQ(e64.intermediate_size, 1024);
  EXPECT_EQ(e64.num_local_experts, 64);
  EXPECT_EQ(e64.num_experts_per_tok, 2);
  const int64_t d = 32, L = 2;
  // Equal totals up to the router (d E + E) and the per-expert output biases ((E-1) d).
  for (const ModelConfig* m : {&e8, &e64}) {
    const int64_t E = m->num_local_experts;
    EXPECT_EQ(config_count(*m).total - config_count(dense).total, L * (d * E + E + (E - 1) * d));
  }
  EXPECT_THROW(config_iso_moe(dense, 3, 2), Error);  // 65536 not divisible by 3
  EXPECT_THROW(config_iso_moe(dense, 8, 9), Error);
  EXPECT_THROW(config_iso_moe(e8, 8, 2), Error);  // not dense
}

TEST(Config, ForgettingPaperConfigMatchesTheOriginalSizes) {
  // methods.md §1.3: 0.95B total; active 0.95B dense, 0.34B E=8 top-2, 0.17B E=64 top-2; within 5%.
  const ModelConfig dense = config_load(MOELAB_SOURCE_DIR "/configs/models/forgetting-paper.json");
  const double want[] = {0.95e9, 0.34e9, 0.17e9};
  const int64_t experts[] = {1, 8, 64};
  for (int i = 0; i < 3; i++) {
    const ModelConfig c = experts[i] == 1 ? dense : config_iso_moe(dense, experts[i], 2);
    const ParamCounts n = config_count(c);
    EXPECT_NEAR(double(n.active) / want[i], 1.0, 0.05) << "E=" << experts[i];
    EXPECT_NEAR(double(n.total) / 0.95e9, 1.0, 0.05) << "E=" << experts[i];
    EXPECT_EQ(c.intermediate_size * c.num_local_experts, 65536);
  }
}

// ----------------------------------------------------------------------------
// errors

TEST(Error, OneLineWhateverTheInput) {
  try {
    moelab::fail("cfg.toml: unknown key 'run.a\nb\r\tc'");
    FAIL() << "fail() returned";
  } catch (const moelab::Error& e) {
    EXPECT_STREQ(e.what(), "cfg.toml: unknown key 'run.a\\x0ab\\x0d\\x09c'");
  }
}

TEST(Config, MoeCtKeysAndRefusals) {
  auto parse = [](const std::string& ct) {
    return config_from_json(
        nlohmann::json::parse(R"({"num_hidden_layers": 4, "moe_ct": )" + ct + "}"), "m.json");
  };
  const ModelConfig c = parse(R"({"experts": 4, "top_k": 2, "gate": "scalar", "lambda": 0.25,
                                  "init": "random", "layers": [1, 3]})");
  EXPECT_EQ(c.moe_ct.experts, 4);
  EXPECT_EQ(c.moe_ct.gate, CtGate::Scalar);
  EXPECT_FALSE(c.moe_ct.copy);
  EXPECT_TRUE(c.moe_ct.on(3));
  EXPECT_FALSE(c.moe_ct.on(0));
  EXPECT_EQ(config_from_json(config_to_json(c), "rt").moe_ct.layers, c.moe_ct.layers);
  auto refusal = [&](const std::string& ct) {
    try {
      parse(ct);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refusal(R"({"experts": 4, "layers": [4]})"),
            "m.json: 'moe_ct.layers': layer 4 is out of range [0, 4)");
  EXPECT_EQ(refusal(R"({"experts": 2, "top_k": 3})"),
            "m.json: 'moe_ct.top_k' (3) must be in [1, moe_ct.experts (2)]");
  EXPECT_EQ(refusal(R"({"experts": 2, "gate": "soft"})"),
            "m.json: moe_ct: 'gate' must be \"fixed\", \"scalar\" or \"token\"");
  EXPECT_EQ(refusal(R"({"experts": 2, "lambda": 1.0})"),
            "m.json: 'moe_ct.lambda' must be in (0, 1) for the token gate (it is sigmoid(b) at the "
            "start)");
}
