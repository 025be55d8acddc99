// KV-cache decoding equals full recomputation: logits at every position of a teacher-forced
// sequence, and greedy continuations, for dense and MoE models with sinks, sliding windows
// shorter than the sequence, GQA and YaRN.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "test_util.hpp"

using namespace moelab;

namespace {

ModelConfig decoder_config(bool moe) {
  ModelConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 24;
  c.ffn_type = moe ? FfnType::Moe : FfnType::Dense;
  c.num_local_experts = moe ? 4 : 1;
  c.num_experts_per_tok = moe ? 2 : 1;
  c.sliding_window = 5;
  c.layer_sliding = {true, false, true};
  c.max_position_embeddings = 64;
  c.yarn_factor = 4.0;
  c.yarn_original_context = 16;
  c.initializer_range = 0.2;
  return c;
}

}  // namespace

class DecodeEquivalence : public ::testing::TestWithParam<bool> {};

TEST_P(DecodeEquivalence, KvCacheLogitsEqualFullRecomputation) {
  const ModelConfig c = decoder_config(GetParam());
  const int64_t B = 3, T = 20;
  Model<float> full(c, B, T);
  full.init_weights(4);
  for (size_t i = 0; i < full.params.size(); i++)  // sinks and biases away from their init
    full.params[i] += float(0.05 * rng_normal(9, 0, i));
  std::vector<int32_t> tok(B * T), none(B * T, -1);
  for (int64_t i = 0; i < B * T; i++) tok[size_t(i)] = int32_t(rng_u64(5, 0, uint64_t(i)) % 61);
  full.forward(tok, none);
  const std::vector<float> want(full.logits().begin(), full.logits().end());  // [B*T, V]
  Decoder dec(full, B, T);
  double worst = 0;
  for (int64_t t = 0; t < T; t++) {
    std::vector<int32_t> col(B);
    for (int64_t b = 0; b < B; b++) col[size_t(b)] = tok[size_t(b * T + t)];
    const auto got = dec.step(col, t);
    for (int64_t b = 0; b < B; b++)
      for (int64_t v = 0; v < 61; v++)
        worst = std::max(
            worst, double(std::abs(got[size_t(b * 61 + v)] - want[size_t((b * T + t) * 61 + v)])));
  }
  EXPECT_LT(worst, 2e-5) << "largest logit difference";
}

TEST_P(DecodeEquivalence, GreedyContinuationEqualsArgmaxOfFullRecomputation) {
  const ModelConfig c = decoder_config(GetParam());
  const int64_t B = 2, P = 7, N = 9;
  Model<float> m(c, B, P + N);
  m.init_weights(6);
  std::vector<int32_t> prompt(B * P);
  for (int64_t i = 0; i < B * P; i++) prompt[size_t(i)] = int32_t(rng_u64(8, 0, uint64_t(i)) % 61);
  Decoder dec(m, B, P + N);
  const auto gen = dec.greedy(prompt, P, N);
  // Recompute each prefix from scratch and take the argmax of its last position.
  for (int64_t i = 0; i < N; i++) {
    const int64_t len = P + i;
    Model<float> f(c, B, len);
    f.params = m.params;
    std::vector<int32_t> seq(B * len), none(B * len, -1);
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < len; t++)
        seq[size_t(b * len + t)] = t < P ? prompt[size_t(b * P + t)] : gen[size_t(b * N + t - P)];
    f.forward(seq, none);
    for (int64_t b = 0; b < B; b++) {
      const float* z = f.logits().data() + (b * len + len - 1) * 61;
      EXPECT_EQ(gen[size_t(b * N + i)], int32_t(std::max_element(z, z + 61) - z))
          << "sequence " << b << ", new token " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DenseAndMoe, DecodeEquivalence, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "moe" : "dense"; });

TEST_P(DecodeEquivalence, PrefillLogitsEqualFullRecomputation) {
  const ModelConfig c = decoder_config(GetParam());
  const int64_t B = 2, T = 17, from = 6;
  Model<float> full(c, B, T);
  full.init_weights(12);
  std::vector<int32_t> tok(B * T), none(B * T, -1);
  for (int64_t i = 0; i < B * T; i++) tok[size_t(i)] = int32_t(rng_u64(13, 0, uint64_t(i)) % 61);
  full.forward(tok, none);
  Decoder dec(full, B, T + 3);
  const auto got = dec.prefill(tok, T, from);
  ASSERT_EQ(got.size(), size_t(B * (T - from) * 61));
  double worst = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = from; t < T; t++)
      for (int64_t v = 0; v < 61; v++)
        worst = std::max(worst, double(std::abs(got[size_t((b * (T - from) + t - from) * 61 + v)] -
                                                full.logits()[size_t((b * T + t) * 61 + v)])));
  EXPECT_LT(worst, 2e-5);
  // and the cache it leaves continues exactly like full recomputation
  Model<float> longer(c, B, T + 1);
  longer.params = full.params;
  std::vector<int32_t> tok2(B * (T + 1)), none2(B * (T + 1), -1), next(B);
  for (int64_t b = 0; b < B; b++) {
    std::copy_n(tok.begin() + b * T, T, tok2.begin() + b * (T + 1));
    next[size_t(b)] = tok2[size_t(b * (T + 1) + T)] = int32_t(b + 3);
  }
  longer.forward(tok2, none2);
  const auto step_logits = dec.step(next, T);
  worst = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t v = 0; v < 61; v++)
      worst =
          std::max(worst, double(std::abs(step_logits[size_t(b * 61 + v)] -
                                          longer.logits()[size_t((b * (T + 1) + T) * 61 + v)])));
  EXPECT_LT(worst, 2e-5);
}
