// KV-cache decoding equals full recomputation: logits at every position of a teacher-forced
// sequence, and greedy continuations, for dense and MoE models with sinks, sliding windows
// shorter than the sequence, GQA and YaRN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "eval/evalset.hpp"
#include "eval/metrics.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using moelab::test::error_of;

namespace {

// tiny_lm with a third (sliding) layer and YaRN
ModelConfig decoder_config(bool moe) {
  ModelConfig c = test::tiny_lm(moe);
  c.num_hidden_layers = 3;
  c.layer_sliding = {true, false, true};
  c.yarn_factor = 4.0;
  c.yarn_original_context = 16;
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

namespace {
// Decodes ids as "<id> " so M_ex is a plain function of the generated ids; like the real
// tokenizers it refuses an id beyond its vocabulary.
struct IdTokenizer final : Tokenizer {
  int64_t vocab = 61;
  std::vector<int32_t> encode(std::string_view) const override { return {}; }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab) fail("ids: token id " + std::to_string(id) + " out of range");
      s += "<" + std::to_string(id) + ">";
    }
    return s;
  }
  int64_t vocab_size() const override { return vocab; }
  int32_t eot_id() const override { return 0; }
  uint64_t fingerprint() const override { return 0; }
  std::string name() const override { return "ids"; }
};

// evaluate() shares one decoder batch between the M_in rows (teacher-forced in the same pass)
// and the M_ex rows, and pads the last batch; each metric must equal its own separate pass.
// With tok_vocab < 61 the model's vocabulary is padded beyond the tokenizer's, and the padded
// ids' head rows are scaled up so that an argmax over all 61 would often choose one: greedy
// tokens and M(f) must then come from the tokenizer's ids, PPL_ent from all of the model's.
void expect_evaluate_equals_separate_passes(bool moe, int64_t tok_vocab) {
  const ModelConfig c = decoder_config(moe);
  const int64_t P = 6, T = 5, n = 5, V = c.vocab_size;
  Model<float> m(c, 1, P + T - 1);
  m.init_weights(21);
  for (int64_t v = tok_vocab; v < V; v++)
    for (int64_t i = 0; i < c.hidden_size; i++)
      m.params[size_t(m.blocks().lm_head + v * c.hidden_size + i)] *= 8.f;
  IdTokenizer tok;
  tok.vocab = tok_vocab;
  EvalSet set;
  set.names = {"a"}, set.types = {"PER"};
  auto draw = [&](uint64_t stream, int64_t len) {
    std::vector<int32_t> v(static_cast<size_t>(len));
    for (size_t i = 0; i < v.size(); i++)
      v[i] = int32_t(rng_u64(stream, 0, i) % uint64_t(tok_vocab));
    return v;
  };
  Decoder one(m, 1, P + T);
  double m_in = 0, m_ex = 0, m_f = 0, nll = 0;
  int64_t padded = 0;  // greedy tokens an argmax over all ids would take from the padding
  std::vector<bool> want_ex;
  for (int64_t i = 0; i < n; i++) {
    EvalSample s{0, "", draw(30 + uint64_t(i), P), draw(40 + uint64_t(i), P),
                 draw(50 + uint64_t(i), T)};
    const auto g_ex = one.greedy(s.ex_prompt, P, T, tok_vocab);
    for (int32_t t : one.greedy(s.ex_prompt, P, T)) padded += t >= tok_vocab;
    // even samples: an entity the continuation contains; odd: one it does not
    s.surface = i % 2 ? "<99>" : tok.decode(std::span(g_ex).subspan(2, 1));
    const auto g_in = one.greedy(s.in_prompt, P, T, tok_vocab);
    for (int64_t t = 0; t < T; t++) m_in += g_in[size_t(t)] == s.target[size_t(t)];
    want_ex.push_back(metric_m_ex_hit(tok.decode(g_ex), s.surface));
    m_ex += want_ex.back();
    std::vector<int32_t> seq(s.in_prompt), none(size_t(P + T - 1), -1);
    seq.insert(seq.end(), s.target.begin(), s.target.end() - 1);
    m.forward(seq, none);
    for (int64_t t = 0; t < T; t++) {
      const float* z = m.logits().data() + (P - 1 + t) * V;
      const float mx = *std::max_element(z, z + V);
      double sum = 0;
      for (int64_t v = 0; v < V; v++) sum += std::exp(double(z[v] - mx));
      nll += std::log(sum) + mx - z[s.target[size_t(t)]];
      m_f += int32_t(std::max_element(z, z + tok_vocab) - z) == s.target[size_t(t)];
    }
    set.samples.push_back(s);
  }
  if (tok_vocab < V) {
    EXPECT_GT(padded, 0) << "the padded ids never win: the test tests nothing";
  }
  const EvalReport r = evaluate(m, tok, set, 2);
  EXPECT_EQ(r.ex_hit, want_ex);
  EXPECT_EQ(r.all.samples, n);
  EXPECT_DOUBLE_EQ(r.all.m_in, m_in / double(n * T));
  EXPECT_DOUBLE_EQ(r.all.m_ex, m_ex / double(n));
  EXPECT_DOUBLE_EQ(r.all.m_f, m_f / double(n * T));
  EXPECT_NEAR(r.all.ppl_ent, std::exp(nll / double(n * T)), 1e-4 * r.all.ppl_ent);
}

}  // namespace

TEST_P(DecodeEquivalence, EvaluateEqualsSeparatePasses) {
  expect_evaluate_equals_separate_passes(GetParam(), 61);
}

// A model vocabulary larger than the tokenizer's (gpt-oss pads o200k): evaluation decodes only
// ids the tokenizer has, and still equals the separate passes.
TEST_P(DecodeEquivalence, EvaluateWithAVocabularyPaddedBeyondTheTokenizers) {
  expect_evaluate_equals_separate_passes(GetParam(), 40);
}

// A set built in code bypasses the loader: evaluate() and the decoder check shapes and ids
// and throw, never write or read out of bounds.
TEST(Evaluate, ChecksSetsThatBypassTheLoader) {
  const ModelConfig c = decoder_config(false);
  Model<float> m(c, 1, 1);
  m.init_weights(3);
  const IdTokenizer tok;
  EvalSet good;
  good.names = {"a"}, good.types = {"PER"};
  good.samples = {EvalSample{0, "x", {1, 2, 3}, {4, 5, 6}, {7, 8}},
                  EvalSample{0, "y", {1, 2, 3}, {4, 5, 6}, {7, 8}}};
  EXPECT_EQ(error_of([&] { evaluate(m, tok, good, 2); }), "");
  const std::vector<std::pair<std::string, std::function<void(EvalSet&)>>> damage = {
      {"empty target", [](EvalSet& s) { s.samples[0].target.clear(); }},
      {"empty prompts",
       [](EvalSet& s) { s.samples[0].in_prompt.clear(), s.samples[0].ex_prompt.clear(); }},
      {"empty ex_prompt", [](EvalSet& s) { s.samples[1].ex_prompt.clear(); }},
      {"longer target", [](EvalSet& s) { s.samples[1].target.push_back(9); }},
      {"shorter in_prompt", [](EvalSet& s) { s.samples[1].in_prompt.pop_back(); }},
      {"id = V", [](EvalSet& s) { s.samples[1].target[1] = 61; }},
      {"negative id", [](EvalSet& s) { s.samples[0].ex_prompt[0] = -1; }},
      {"huge id", [](EvalSet& s) { s.samples[0].in_prompt[2] = 1 << 30; }},
      {"entity index", [](EvalSet& s) { s.samples[1].entity = 1; }},
      {"names and types", [](EvalSet& s) { s.types.clear(); }},
  };
  for (const auto& [label, f] : damage) {
    EvalSet bad = good;
    f(bad);
    const std::string err = error_of([&] { evaluate(m, tok, bad, 2); });
    EXPECT_NE(err, "") << label;
    EXPECT_EQ(err.find('\n'), std::string::npos) << label;
  }
  EXPECT_NE(error_of([&] { evaluate(m, tok, good, 0); }).find("batch must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([&] { evaluate(m, tok, EvalSet{}, 2); }).find("no samples"),
            std::string::npos);
  // the decoder itself refuses ids outside the embedding and greedy beyond the vocabulary
  Decoder dec(m, 2, 8);
  EXPECT_NE(error_of([&] {
              dec.step(std::vector<int32_t>{3, 61}, 0);
            }).find("outside the model"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              dec.prefill(std::vector<int32_t>{3, -2, 1, 1}, 2, 0);
            }).find("outside"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              dec.greedy(std::vector<int32_t>{1, 2}, 1, 2, 62);
            }).find("greedy"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Decoder(m, 1, 65); }).find("max_position_embeddings (64)"),
            std::string::npos);
}
