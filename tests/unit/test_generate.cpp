// Generation: greedy equals the evaluation decoder token for token, the sampler draws from the
// hand-computed distribution (temperature, top-k, top-p), a seed fixes the text, and the text
// stream holds back incomplete UTF-8 and cuts at stop strings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "eval/generate.hpp"
#include "letter_tokenizer.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using moelab::test::error_of;

namespace {

std::vector<int32_t> random_prompt(int64_t n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) p[size_t(i)] = int32_t(rng_u64(seed, 0, uint64_t(i)) % 50);
  return p;
}

constexpr int32_t kNoEot = -7;  // an end-of-text id no step can choose

}  // namespace

// ----------------------------------------------------------------------------
// greedy

class GenerateGreedy : public ::testing::TestWithParam<bool> {};

TEST_P(GenerateGreedy, EqualsTheEvaluationDecodersGreedyTokens) {
  const ModelConfig c = test::tiny_lm(GetParam());
  Model<float> m(c, 1, 1);
  m.init_weights(11);
  const int64_t P = 7, N = 24;
  const auto prompt = random_prompt(P, 3);
  for (int64_t n_ids :
       {int64_t(61), int64_t(40)}) {  // 40: a vocabulary padded beyond the tokenizer's
    LetterTokenizer tok(n_ids, kNoEot);
    Decoder dec(m, 1, P + N);
    const auto want = dec.greedy(prompt, P, N, n_ids);
    GenerateOptions o{.max_new = N, .greedy = true};
    EXPECT_EQ(generate(m, tok, prompt, o).tokens, want) << "--greedy, ids < " << n_ids;
    o = {.max_new = N, .temperature = 0, .seed = 9};
    const GenerateResult r = generate(m, tok, prompt, o);
    EXPECT_EQ(r.tokens, want) << "temperature 0, ids < " << n_ids;
    EXPECT_EQ(r.reason, FinishReason::Length);
    EXPECT_EQ(r.text, tok.decode(want));
    // top-k 1 and a tiny top-p leave the argmax alone, at any temperature and seed
    for (uint64_t seed : {1, 2}) {
      o = {.max_new = N, .temperature = 1.7, .top_k = 1, .seed = seed};
      EXPECT_EQ(generate(m, tok, prompt, o).tokens, want) << "top-k 1, seed " << seed;
      o = {.max_new = N, .temperature = 1.7, .top_p = 1e-9, .seed = seed};
      EXPECT_EQ(generate(m, tok, prompt, o).tokens, want) << "top-p 1e-9, seed " << seed;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DenseAndMoe, GenerateGreedy, ::testing::Bool());

TEST(Generate, StopsAtTheEndOfTextToken) {
  Model<float> m(test::tiny_lm(false), 1, 1);
  m.init_weights(11);
  const auto prompt = random_prompt(5, 4);
  Decoder dec(m, 1, 5 + 12);
  const auto want = dec.greedy(prompt, 5, 12);
  // the eot id is the first greedy token not seen before it
  size_t at = 1;
  while (at < want.size() && std::count(want.begin(), want.begin() + at, want[at]) > 0) at++;
  ASSERT_LT(at, want.size()) << "no fresh token in the greedy continuation";
  LetterTokenizer tok(61, want[at]);
  const GenerateResult r = generate(m, tok, prompt, {.max_new = 12, .greedy = true});
  EXPECT_EQ(r.reason, FinishReason::Eot);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(want.begin(), want.begin() + at));
}

// ----------------------------------------------------------------------------
// sampling

TEST(Generate, ASeedFixesTheSampleAndAnotherSeedChangesIt) {
  Model<float> m(test::tiny_lm(true), 1, 1);
  m.init_weights(12);
  LetterTokenizer tok(61, kNoEot);
  const auto prompt = random_prompt(6, 5);
  GenerateOptions o{.max_new = 30, .temperature = 1.5, .top_p = 0.95, .top_k = 40, .seed = 42};
  const auto a = generate(m, tok, prompt, o).tokens, b = generate(m, tok, prompt, o).tokens;
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 30u);
  o.seed = 43;
  EXPECT_NE(generate(m, tok, prompt, o).tokens, a);
  o.greedy = true;  // sanity: the sample is not simply the greedy continuation
  EXPECT_NE(generate(m, tok, prompt, o).tokens, a);
}

// Hand-computed: softmax(z / T) with T = 1.4 and the cuts on it.
TEST(Sampler, DistributionMatchesTheHandComputedOne) {
  const std::vector<float> z = {0.5f, 2.0f, -1.0f, 1.0f, 0.0f};  // ids 1, 3, 0, 4, 2 by rank
  const double T = 1.4;
  std::vector<double> e(5);
  double s = 0;
  for (int i = 0; i < 5; i++) s += e[size_t(i)] = std::exp(double(z[size_t(i)]) / T);
  std::vector<double> p(5);
  for (int i = 0; i < 5; i++) p[size_t(i)] = e[size_t(i)] / s;
  // p = {0.1565, 0.4568, 0.0536, 0.2236, 0.1095} (ids 0..4)
  auto dist = [&](GenerateOptions o) {
    std::vector<double> q(5, 0.0);
    for (const auto& [v, pr] : sample_distribution(z, o)) q[size_t(v)] = pr;
    return q;
  };
  test::expect_close(dist({.temperature = T}), p, 1e-12, 1e-15, "softmax(z / T)");
  // top-k 2: ids 1 and 3 renormalised
  const double k2 = p[1] + p[3];
  test::expect_close(dist({.temperature = T, .top_k = 2}),
                     std::vector<double>{0, p[1] / k2, 0, p[3] / k2, 0}, 1e-12, 1e-15, "top-k 2");
  // top-p 0.8: 0.457 < 0.8, 0.457 + 0.224 = 0.681 < 0.8, + 0.157 = 0.837 >= 0.8: ids 1, 3, 0
  const double p3 = p[1] + p[3] + p[0];
  test::expect_close(dist({.temperature = T, .top_p = 0.8}),
                     std::vector<double>{p[0] / p3, p[1] / p3, 0, p[3] / p3, 0}, 1e-12, 1e-15,
                     "top-p 0.8");
  // top-k 4 then top-p 0.8 of the renormalised four: ids 1 and 3 reach 0.681 / 0.946 = 0.719,
  // so id 0 joins too
  const double k4 = 1 - p[2];
  ASSERT_LT((p[1] + p[3]) / k4, 0.8);
  test::expect_close(dist({.temperature = T, .top_p = 0.8, .top_k = 4}),
                     std::vector<double>{p[0] / p3, p[1] / p3, 0, p[3] / p3, 0}, 1e-12, 1e-15,
                     "top-k 4, top-p 0.8");
  // top-k 4 then top-p 0.7: ids 1 and 3 suffice after renormalisation (0.719 >= 0.7), though
  // not before it (0.681 < 0.7)
  ASSERT_LT(p[1] + p[3], 0.7);
  ASSERT_GE((p[1] + p[3]) / k4, 0.7);
  test::expect_close(dist({.temperature = T, .top_p = 0.7, .top_k = 4}),
                     std::vector<double>{0, p[1] / k2, 0, p[3] / k2, 0}, 1e-12, 1e-15,
                     "top-k 4, top-p 0.7");

  // Frequencies over 40000 (seed, step) draws, each within 5 standard errors of p.
  const int64_t n = 40000;
  for (const auto& [o, want] : {std::pair{GenerateOptions{.temperature = T}, p},
                                std::pair{GenerateOptions{.temperature = T, .top_k = 2},
                                          std::vector<double>{0, p[1] / k2, 0, p[3] / k2, 0}}}) {
    std::vector<double> f(5, 0.0);
    for (int64_t i = 0; i < n; i++) {
      GenerateOptions oi = o;
      oi.seed = uint64_t(i / 4);
      f[size_t(sample_next(z, oi, i % 4))] += 1.0 / double(n);
    }
    for (size_t v = 0; v < 5; v++)
      EXPECT_LE(std::abs(f[v] - want[v]), 5 * std::sqrt(want[v] * (1 - want[v]) / double(n)))
          << "id " << v << ": frequency " << f[v] << ", probability " << want[v] << ", top-k "
          << o.top_k;
  }
  // a high temperature flattens, a low one sharpens: frequencies of the top id follow
  const GenerateOptions hot{.temperature = 100}, cold{.temperature = 0.05};
  double f_hot = 0, f_cold = 0;
  for (int64_t i = 0; i < 4000; i++) {
    GenerateOptions h = hot, c = cold;
    h.seed = c.seed = uint64_t(i);
    f_hot += sample_next(z, h, 0) == 1, f_cold += sample_next(z, c, 0) == 1;
  }
  EXPECT_NEAR(f_hot / 4000, 0.2, 0.03);
  EXPECT_GT(f_cold / 4000, 0.99);
}

TEST(Sampler, OptionsOutOfRangeFailInOneLine) {
  auto err = [](GenerateOptions o) { return error_of([&] { generate_check(o); }); };
  EXPECT_EQ(err({}), "");
  EXPECT_EQ(err({.max_new = 0}), "generate: --max-new must be at least 1 (not 0)");
  EXPECT_EQ(err({.temperature = -0.5}), "generate: --temperature must be >= 0 (not -0.5)");
  EXPECT_EQ(err({.top_p = 0}), "generate: --top-p must be in (0, 1] (not 0)");
  EXPECT_EQ(err({.top_p = 1.5}), "generate: --top-p must be in (0, 1] (not 1.5)");
  EXPECT_EQ(err({.top_k = -1}), "generate: --top-k must be >= 0 (not -1)");
  EXPECT_EQ(err({.stop = {""}}), "generate: --stop: an empty stop string");
  EXPECT_EQ(err({.logit_bias = {{3, 60}, {5, 1}}}), "");
  EXPECT_EQ(err({.logit_bias = {{3, 60}, {5, 1}, {3, 60}}}),
            "generate: logit_bias: id 3 has more than one bias");
}

// The server's rules at the context's end: a prompt or max_new beyond the context is refused; a
// prompt that leaves less room than max_new ends where the positions run out (the last token is
// never fed back: context - prompt + 1 new tokens), FinishReason::Length.
TEST(Generate, AtTheContextsEndGenerationEndsAsTheServersDoes) {
  Model<float> m(test::tiny_lm(false), 1, 1);  // 64 positions
  m.init_weights(1);
  LetterTokenizer tok(61, kNoEot);
  EXPECT_EQ(error_of([&] { generate(m, tok, random_prompt(65, 1), {.max_new = 1}); }),
            "generate: the prompt has 65 tokens, more than the model's context (64)");
  EXPECT_EQ(error_of([&] { generate(m, tok, random_prompt(3, 1), {.max_new = 65}); }),
            "generate: --max-new must be at most the model's context (64) (not 65)");
  const auto p60 = random_prompt(60, 1);
  const GenerateResult cut = generate(m, tok, p60, {.max_new = 10, .greedy = true});
  EXPECT_EQ(cut.tokens.size(), 5u);
  EXPECT_EQ(cut.reason, FinishReason::Length);
  EXPECT_EQ(generate(m, tok, p60, {.max_new = 5, .greedy = true}).tokens, cut.tokens);
  EXPECT_EQ(generate(m, tok, random_prompt(59, 1), {.max_new = 5}).tokens.size(), 5u);
  EXPECT_EQ(generate(m, tok, random_prompt(64, 1), {.max_new = 3}).tokens.size(), 1u);
}

// ----------------------------------------------------------------------------
// the text stream

TEST(TextStream, HoldsBackIncompleteUtf8) {
  TextStream s({});
  EXPECT_EQ(s.update("caf"), "caf");
  EXPECT_EQ(s.update("caf\xC3"), "");  // the first byte of é
  EXPECT_EQ(s.update("caf\xC3\xA9"), "\xC3\xA9");
  EXPECT_EQ(s.update("caf\xC3\xA9 \xE2\x82"), " ");     // two bytes of €
  EXPECT_EQ(s.update("caf\xC3\xA9 \xEF\xBF\xBD"), "");  // U+FFFD: a byte-fallback placeholder
  EXPECT_EQ(s.update("caf\xC3\xA9 \xE2\x82\xAC!"), "\xE2\x82\xAC!");
  EXPECT_EQ(s.update("caf\xC3\xA9 \xE2\x82\xAC!\xF0\x9F"), "");
  EXPECT_EQ(s.finish(), "\xF0\x9F");  // the end: whatever was made
  EXPECT_EQ(s.text(), "caf\xC3\xA9 \xE2\x82\xAC!\xF0\x9F");
}

TEST(TextStream, CutsAtTheEarliestStopString) {
  TextStream s({"world", "lo w"});
  EXPECT_EQ(s.update("Hel"), "He");   // "l" may begin "lo w"
  EXPECT_EQ(s.update("Hello"), "l");  // "lo" may
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.update("Hello w"), "");  // "lo w" is there, before "world" could be: stop
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.update("Hello world"), "");
  EXPECT_EQ(s.text(), "Hel");
  EXPECT_EQ(s.finish(), "");
  TextStream t({"xyz"});
  EXPECT_EQ(t.update("abx"), "ab");
  EXPECT_EQ(t.update("abxa"), "xa");  // "x" did not go on to "xyz"
  EXPECT_EQ(t.update("abxax"), "");
  EXPECT_EQ(t.finish(), "x");  // no stop came
  EXPECT_EQ(t.text(), "abxax");
}

TEST(Generate, StopStringsCutTheOutput) {
  Model<float> m(test::tiny_lm(false), 1, 1);
  m.init_weights(11);
  LetterTokenizer tok(61, kNoEot);
  const auto prompt = random_prompt(6, 8);
  const GenerateOptions free{.max_new = 20, .greedy = true};
  const std::string all = generate(m, tok, prompt, free).text;
  ASSERT_EQ(all.size(), 20u);
  GenerateOptions o = free;
  o.stop = {all.substr(9, 3), "#"};  // the second never occurs
  const std::string cut = all.substr(0, all.find(o.stop[0]));
  std::string printed;
  int64_t calls = 0;
  const GenerateResult r = generate(m, tok, prompt, o, [&](int32_t, std::string_view piece) {
    printed += piece;
    calls++;
  });
  EXPECT_EQ(r.reason, FinishReason::Stop);
  EXPECT_EQ(r.text, cut);
  EXPECT_EQ(printed, cut);
  EXPECT_EQ(int64_t(r.tokens.size()), int64_t(all.find(o.stop[0])) + 3);  // until it completes
  EXPECT_EQ(calls, int64_t(r.tokens.size()));
}
