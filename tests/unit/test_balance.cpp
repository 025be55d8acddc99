// Auxiliary-loss-free load balancing (methods.md §3.7.1): the balance bias chooses experts but
// never weighs them, a zero bias is the unbalanced model bit for bit, the update rule, the bias
// is outside the gradient and the optimizer, and its config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "backend/reference.hpp"
#include "core/error.hpp"
#include "kernels/kernels.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"
#include "train/adamw.hpp"

using namespace moelab;
using namespace moelab::test;
using json = nlohmann::json;

namespace {

ModelConfig balanced(double rate) {
  ModelConfig c = tiny(true);
  c.router_balance.bias_rate = rate;
  return c;
}

std::string error_of(const json& j) {
  try {
    config_from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

json moe_json() {
  return {{"vocab_size", 100},        {"hidden_size", 32},        {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 8},
          {"intermediate_size", 64},  {"num_local_experts", 4},   {"num_experts_per_tok", 2}};
}

}  // namespace

// ----------------------------------------------------------------------------
// the kernel

TEST(BalanceKernel, BiasChoosesTheExpertsButTheWeightsStayTheRawSoftmax) {
  // Without a bias the top 2 are experts 0 and 1; the bias lifts expert 3 above expert 1.
  const std::vector<float> z = {2.0f, 1.0f, 0.5f, 0.0f}, b = {0.0f, 0.0f, 0.0f, 1.5f};
  std::vector<int32_t> idx(2);
  std::vector<float> w(2);
  kernels::router<float>::forward(idx.data(), w.data(), z.data(), nullptr, 1, 4, 2);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1}));
  kernels::router<float>::forward(idx.data(), w.data(), z.data(), b.data(), 1, 4, 2);
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 3}));
  const double e0 = std::exp(2.0), e3 = std::exp(0.0);  // softmax of the raw 2.0 and 0.0
  EXPECT_NEAR(w[0], e0 / (e0 + e3), 1e-6);
  EXPECT_NEAR(w[1], e3 / (e0 + e3), 1e-6);
  // The bias may put a smaller raw logit first: the weights still follow the raw logits.
  const std::vector<float> big = {0.0f, 0.0f, 0.0f, 5.0f};
  kernels::router<float>::forward(idx.data(), w.data(), z.data(), big.data(), 1, 4, 2);
  EXPECT_EQ(idx, (std::vector<int32_t>{3, 0}));
  EXPECT_NEAR(w[0], e3 / (e0 + e3), 1e-6);
  EXPECT_NEAR(w[1], e0 / (e0 + e3), 1e-6);
}

TEST(BalanceKernel, MatchesTheReferenceAndAZeroBiasIsNoBias) {
  const int64_t N = 23, E = 8, k = 3;
  const auto z = randn(N * E, 4, 2.0), bias = randn(E, 5, 1.0);
  std::vector<int32_t> idx(N * k), idx_ref(N * k), idx0(N * k);
  std::vector<double> w(N * k), w_ref(N * k), w0(N * k);
  kernels::router<double>::forward(idx.data(), w.data(), z.data(), bias.data(), N, E, k);
  ref::router<double>::forward(idx_ref.data(), w_ref.data(), z.data(), N, E, k, bias.data());
  EXPECT_EQ(idx, idx_ref);
  expect_close(w, w_ref, 1e-12, 1e-14, "biased router weights");
  kernels::router<double>::forward(idx0.data(), w0.data(), z.data(), nullptr, N, E, k);
  EXPECT_NE(idx, idx0);  // this bias changes some choices
  const std::vector<double> zero(E, 0.0);
  kernels::router<double>::forward(idx.data(), w.data(), z.data(), zero.data(), N, E, k);
  EXPECT_EQ(idx, idx0);
  EXPECT_TRUE(same_bits(w, w0));
}

// ----------------------------------------------------------------------------
// the update rule

TEST(Balance, UpdateRuleOnAKnownLoadVector) {
  // E = 4, 16 assignments: fair share 4. Over-loaded experts go down, under-loaded ones up, an
  // expert at exactly its share stays.
  std::vector<float> b = {0.5f, 0.0f, -0.25f, 0.0f};
  const std::vector<int64_t> counts = {10, 2, 4, 0};
  balance_update<float>(device_cpu().ops<float>(), b, counts, 0.125);
  EXPECT_EQ(b, (std::vector<float>{0.375f, 0.125f, -0.25f, 0.125f}));
  // No assignments at all: nothing moves.
  const std::vector<int64_t> none = {0, 0, 0, 0};
  balance_update<float>(device_cpu().ops<float>(), b, none, 0.125);
  EXPECT_EQ(b, (std::vector<float>{0.375f, 0.125f, -0.25f, 0.125f}));
}

TEST(Balance, ModelCountsEveryForwardSinceZeroGradAndUpdatesFromThem) {
  const ModelConfig c = balanced(0.01);
  const int64_t B = 2, T = 8, N = B * T, k = c.num_experts_per_tok;
  Model<double> m(c, B, T);
  m.init_weights(3);
  jitter(m, 4);
  const TensorView* bias = m.layout.find("model.layers.1.mlp.router.balance_bias");
  ASSERT_NE(bias, nullptr);
  for (int64_t i = 0; i < bias->numel; i++) m.params[size_t(bias->offset + i)] = 0;
  m.zero_grad();
  std::vector<int64_t> want(4, 0);
  for (uint64_t s : {1, 2}) {
    const Batch b = batch(N, c.vocab_size, s);
    m.forward(b.tokens, b.targets);
    const std::vector<double> load = m.expert_load()[1];
    for (size_t e = 0; e < 4; e++) want[e] += std::llround(load[e] * double(N * k));
  }
  EXPECT_EQ(m.route_counts()[1], want);
  m.balance_update();
  for (size_t e = 0; e < 4; e++) {
    const double got = m.params[size_t(bias->offset) + e];
    const int64_t s = 2 * N * k - 4 * want[e];  // sign(fair share - load)
    EXPECT_EQ(got, s > 0 ? 0.01 : s < 0 ? -0.01 : 0.0) << "expert " << e;
  }
  m.zero_grad();
  EXPECT_EQ(m.route_counts()[1], std::vector<int64_t>(4, 0));
}

TEST(Balance, ALargeBiasSendsEveryTokenToItsExpert) {
  const ModelConfig c = balanced(0.01);
  Model<float> m(c, 2, 8);
  m.init_weights(7);
  const TensorView* bias = m.layout.find("model.layers.0.mlp.router.balance_bias");
  m.params[size_t(bias->offset) + 2] = 100.0f;
  const Batch b = batch(16, c.vocab_size, 9);
  m.zero_grad();
  m.forward(b.tokens, b.targets);
  EXPECT_EQ(m.route_counts()[0][2], 16);  // one of each token's two slots
  EXPECT_NEAR(m.expert_load()[0][2], 0.5, 1e-12);
}

// ----------------------------------------------------------------------------
// the model without and with a zero bias

TEST(Balance, AZeroBiasIsTheUnbalancedModelBitForBit) {
  const ModelConfig off = tiny(true), on = balanced(0.01);
  const int64_t B = 2, T = 8;
  Model<float> a(off, B, T), b(on, B, T);
  a.init_weights(11);
  b.init_weights(11);
  // Registered last: every other tensor keeps its place and its initial value.
  ASSERT_EQ(b.layout.tensors.size(), a.layout.tensors.size() + 2);
  ASSERT_EQ(b.layout.tensors[a.layout.tensors.size()].name,
            "model.layers.0.mlp.router.balance_bias");
  EXPECT_TRUE(std::equal(a.params.begin(), a.params.end(), b.params.begin()));
  for (size_t i = a.params.size(); i < b.params.size(); i++) ASSERT_EQ(b.params[i], 0.0f);
  const Batch x = batch(B * T, off.vocab_size, 5);
  a.zero_grad(), b.zero_grad();
  const Losses la = a.forward(x.tokens, x.targets), lb = b.forward(x.tokens, x.targets);
  EXPECT_EQ(la.lm, lb.lm);
  EXPECT_EQ(la.aux, lb.aux);
  EXPECT_EQ(la.z, lb.z);
  EXPECT_TRUE(same_bits(logits_of(a), logits_of(b)));
  a.backward(), b.backward();
  ASSERT_EQ(a.grads.size(), b.grads.size());  // the frozen bias has no gradient
  EXPECT_TRUE(std::equal(a.grads.begin(), a.grads.end(), b.grads.begin()));
  EXPECT_EQ(a.route_counts(), b.route_counts());
}

TEST(Balance, TheBiasGetsNoGradientNoDecayAndNoMoments) {
  const ModelConfig c = balanced(0.01);
  Model<double> m(c, 2, 8);
  m.init_weights(2);
  jitter(m, 6);  // a non-zero bias, so that it matters in the forward
  const Batch x = batch(16, c.vocab_size, 8);
  m.zero_grad();
  m.forward(x.tokens, x.targets);
  m.backward();
  AdamW<double> opt(m.layout, {});
  int64_t seen = 0;
  for (size_t i = 0; i < m.layout.tensors.size(); i++) {
    const TensorView& t = m.layout.tensors[i];
    if (t.name.find("balance_bias") == std::string::npos) continue;
    seen++;
    EXPECT_TRUE(t.frozen) << t.name;
    EXPECT_FALSE(t.decay) << t.name;
    EXPECT_EQ(opt.moment_offset(i), -1) << t.name;
    EXPECT_TRUE(m.grad_of(t).empty()) << t.name;
  }
  EXPECT_EQ(seen, 2);
  const std::vector<double> before = m.params;
  opt.update(m.params, m.grads, 1e-2);
  for (const TensorView& t : m.layout.tensors)
    if (t.name.find("balance_bias") != std::string::npos) {
      for (int64_t j = 0; j < t.numel; j++)
        ASSERT_EQ(m.params[size_t(t.offset + j)], before[size_t(t.offset + j)]);
    }
}

TEST(Balance, OnlyRoutedLayersGetABias) {
  ModelConfig c = balanced(0.01);
  c.moe_layers = {1};
  const ParamLayout p = layout_build(c);
  EXPECT_EQ(p.find("model.layers.0.mlp.router.balance_bias"), nullptr);
  ASSERT_NE(p.find("model.layers.1.mlp.router.balance_bias"), nullptr);
  EXPECT_EQ(p.find("model.layers.1.mlp.router.balance_bias")->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(config_count(c).total, p.total);  // counted with the router
  c.router_balance = {};
  EXPECT_EQ(layout_build(c).tensors.size() + 1, p.tensors.size());
  EXPECT_EQ(config_count(c).total + 4, p.total);
}

// ----------------------------------------------------------------------------
// config

TEST(BalanceConfig, ParsesRoundTripsAndIsAbsentWhenOff) {
  json j = moe_json();
  EXPECT_FALSE(config_from_json(j, "x").router_balance.on());
  EXPECT_FALSE(config_to_json(config_from_json(j, "x")).contains("router_balance"));
  j["router_balance"] = {{"bias_rate", 0.001}};
  const ModelConfig c = config_from_json(j, "x");
  EXPECT_EQ(c.router_balance.bias_rate, 0.001);
  EXPECT_EQ(config_to_json(c)["router_balance"]["bias_rate"], 0.001);
  EXPECT_EQ(config_from_json(config_to_json(c), "y").router_balance.bias_rate, 0.001);
  j["router_balance"] = {{"bias_rate", 0}};
  EXPECT_FALSE(config_from_json(j, "x").router_balance.on());
  j["router_balance"] = nullptr;
  EXPECT_FALSE(config_from_json(j, "x").router_balance.on());
}

TEST(BalanceConfig, BadValuesGiveOneLine) {
  auto with = [](json v) {
    json j = moe_json();
    j["router_balance"] = v;
    return error_of(j);
  };
  EXPECT_EQ(with({{"bias_rate", -0.1}}),
            "cfg.json: 'router_balance.bias_rate' must be >= 0 (got -0.1)");
  EXPECT_EQ(with({{"bias_rate", "fast"}}),
            "cfg.json: router_balance: 'bias_rate' must be a number");
  EXPECT_EQ(with({{"rate", 0.1}}), "cfg.json: router_balance: 'rate' is not a known key");
  EXPECT_EQ(with(0.1), "cfg.json: 'router_balance' must be an object or null");
  json dense = moe_json();
  dense["num_local_experts"] = 1, dense["num_experts_per_tok"] = 1;
  dense["router_balance"] = {{"bias_rate", 0.1}};
  EXPECT_EQ(error_of(dense),
            "cfg.json: 'router_balance' needs routed experts (num_local_experts > 1)");
  ModelConfig c = tiny(true);
  c.router_balance.bias_rate = std::nan("");  // from TOML
  try {
    config_validate(c, "x.toml");
    FAIL() << "a NaN rate was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "x.toml: 'router_balance.bias_rate' must be a finite number (got nan)");
  }
}
