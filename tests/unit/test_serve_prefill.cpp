// The server engine's chunked prefill: a prompt fed in chunks of 1, 7, 64 tokens or whole gets
// the same log-probabilities and the same greedy continuation, equal to those of the decoder's
// one-pass prefill within float rounding; and a long prompt entering while another sequence
// decodes takes ceil(L / chunk) passes, each holding at most one chunk of it and one new token
// of the decoding sequence (the order of the engine's passes, not their time).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "letter_tokenizer.hpp"
#include "serve/engine.hpp"
#include "tiny_config.hpp"

using namespace moelab;

namespace {

constexpr int32_t kEot = 60;
constexpr double kTol = 1e-5;  // float rounding of one log-probability

std::vector<int32_t> prompt_ids(int64_t n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(n));  // [n] letters
  for (int64_t i = 0; i < n; i++) {
    p[size_t(i)] = int32_t(rng_u64(seed, 7, uint64_t(i)) % 52);
  }
  return p;
}

// A scoring and greedy request as the harness sends it: echo, logprobs 1, a few new tokens.
std::shared_ptr<Sequence> scored_sequence(const std::vector<int32_t>& prompt, int64_t max_new) {
  SeqSpec s;
  s.prompt = prompt;
  s.gen.max_new = max_new;
  s.gen.greedy = true;
  s.logprobs = 1;
  s.echo = true;
  return std::make_shared<Sequence>(std::move(s));
}

SeqOutput run_alone(const Model<float>& m, const Tokenizer& tok, int64_t chunk,
                    const std::vector<int32_t>& prompt, int64_t max_new) {
  Engine e(m, tok, EngineOptions{.slots = 2, .queue = 4, .prefill_chunk = chunk});
  auto seq = scored_sequence(prompt, max_new);
  EXPECT_TRUE(e.submit({seq}));
  const SeqOutput out = seq->wait(size_t(max_new), size_t(1) << 30);
  EXPECT_TRUE(out.done);
  EXPECT_EQ(out.error, "");
  return out;
}

// log p(prompt[t] | prompt[<t]) for t >= 1 from the decoder's one-pass prefill (the tiled
// attention of training), in double from its float logits
std::vector<double> one_pass_logprobs(const Model<float>& m, const std::vector<int32_t>& prompt) {
  const int64_t n = int64_t(prompt.size()), V = m.cfg.vocab_size;
  Decoder dec(m, 1, n);
  std::vector<double> lp(static_cast<size_t>(n), 0.0);
  dec.prefill_slot(0, prompt, 0, [&](int64_t t0, std::span<const float> z) {
    for (int64_t r = 0; r < int64_t(z.size()) / V; r++) {
      const float* row = z.data() + r * V;
      const int64_t t = t0 + r;
      if (t + 1 >= n) {
        continue;
      }
      const double mx = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; v++) {
        sum += std::exp(double(row[v]) - mx);
      }
      lp[size_t(t + 1)] = double(row[prompt[size_t(t + 1)]]) - mx - std::log(sum);
    }
  });
  return lp;
}

}  // namespace

TEST(ServePrefill, ChunkedPromptsScoreAndContinueAsOneChunk) {
  for (bool moe : {false, true}) {
    ModelConfig c = test::tiny_lm(moe);
    c.max_position_embeddings = 160;
    Model<float> m(c, 1, 1);
    m.init_weights(21);
    LetterTokenizer tok(52, kEot);
    const int64_t L = 130, max_new = 8;
    const std::vector<int32_t> prompt = prompt_ids(L, moe ? 2 : 1);
    const SeqOutput whole = run_alone(m, tok, L, prompt, max_new);
    ASSERT_EQ(int64_t(whole.prompt.size()), L);
    ASSERT_EQ(int64_t(whole.tokens.size()), max_new);
    for (int64_t chunk : {1, 7, 64}) {
      const SeqOutput got = run_alone(m, tok, chunk, prompt, max_new);
      ASSERT_EQ(got.prompt.size(), whole.prompt.size());
      // every row runs the same kernels whatever shares its pass; only the GEMMs' summation
      // order may change with the number of rows (measured: at most about 1e-6)
      double worst = 0;
      for (size_t t = 0; t < got.prompt.size(); t++) {
        EXPECT_EQ(got.prompt[t].has_logprob, whole.prompt[t].has_logprob);
        EXPECT_NEAR(got.prompt[t].logprob, whole.prompt[t].logprob, kTol)
            << "chunk " << chunk << " position " << t << " moe " << moe;
        worst = std::max(worst, std::fabs(got.prompt[t].logprob - whole.prompt[t].logprob));
        ASSERT_EQ(got.prompt[t].top.size(), t == 0 ? 0u : 1u);
        if (t == 0) {
          continue;
        }
        EXPECT_EQ(got.prompt[t].top[0].first, whole.prompt[t].top[0].first) << "chunk " << chunk;
        EXPECT_NEAR(got.prompt[t].top[0].second, whole.prompt[t].top[0].second, kTol);
      }
      ASSERT_EQ(got.tokens.size(), whole.tokens.size());
      for (size_t i = 0; i < got.tokens.size(); i++) {
        EXPECT_EQ(got.tokens[i].id, whole.tokens[i].id) << "chunk " << chunk << " token " << i;
        EXPECT_NEAR(got.tokens[i].logprob, whole.tokens[i].logprob, kTol) << "chunk " << chunk;
      }
      std::printf("chunk %lld moe %d: largest |difference| of a prompt log-probability %.3g\n",
                  static_cast<long long>(chunk), int(moe), worst);
      EXPECT_EQ(got.text, whole.text);
    }
    // the decoder's one-pass prefill (tiled attention): equal within float rounding
    const std::vector<double> want = one_pass_logprobs(m, prompt);
    EXPECT_FALSE(whole.prompt[0].has_logprob);
    for (int64_t t = 1; t < L; t++) {
      EXPECT_NEAR(whole.prompt[size_t(t)].logprob, want[size_t(t)], 1e-4)
          << "position " << t << " moe " << moe;
    }
  }
}

TEST(ServePrefill, ALongPromptEntersOneChunkPerDecodingStep) {
  ModelConfig c = test::tiny_lm(false);
  c.max_position_embeddings = 4096;  // room for A to decode until it is cancelled
  Model<float> m(c, 1, 1);
  m.init_weights(3);
  LetterTokenizer tok(52, kEot);
  const int64_t chunk = 7, L = 50;
  Engine e(m, tok, EngineOptions{.slots = 2, .queue = 4, .prefill_chunk = chunk, .trace = true});
  // A decodes (the end token banned) until it is cancelled
  SeqSpec a_spec;
  a_spec.prompt = prompt_ids(3, 5);
  a_spec.gen.max_new = 4000;
  a_spec.gen.greedy = true;
  a_spec.gen.logit_bias = {{kEot, -100.0}};
  auto a = std::make_shared<Sequence>(std::move(a_spec));
  ASSERT_TRUE(e.submit({a}));
  ASSERT_FALSE(a->wait(0, size_t(1) << 30).done);  // A has its first token
  auto b = scored_sequence(prompt_ids(L, 6), 2);
  ASSERT_TRUE(e.submit({b}));
  const SeqOutput b_out = b->wait(2, size_t(1) << 30);
  ASSERT_TRUE(b_out.done);
  EXPECT_EQ(b_out.error, "");
  EXPECT_EQ(int64_t(b_out.prompt.size()), L);
  a->cancel();
  ASSERT_TRUE(a->wait_done(std::chrono::seconds(60)));
  const std::vector<EnginePass> passes = e.trace();
  // the passes that fed B's prompt, in order
  std::vector<size_t> b_passes;
  int64_t next_pos = 0;
  for (size_t i = 0; i < passes.size(); i++) {
    int64_t a_rows = 0, b_prompt_rows = 0;
    for (const EngineTraceRows& r : passes[i]) {
      if (r.seq == a->number()) {
        a_rows += r.count;
        EXPECT_FALSE(r.prompt && i > 0) << "A's prompt took one pass, the first";
      }
      if (r.seq == b->number() && r.prompt) {
        EXPECT_EQ(r.pos, next_pos) << "B's chunks in order, pass " << i;
        EXPECT_LE(r.count, chunk) << "pass " << i;
        next_pos = r.pos + r.count;
        b_prompt_rows += r.count;
      }
    }
    if (b_prompt_rows > 0) {
      b_passes.push_back(i);
      // one new token of A in the same pass: between two of A's tokens, at most one chunk of B
      EXPECT_EQ(a_rows, 1) << "pass " << i;
    }
  }
  EXPECT_EQ(next_pos, L);
  ASSERT_EQ(int64_t(b_passes.size()), (L + chunk - 1) / chunk);
  for (size_t k = 1; k < b_passes.size(); k++) {
    EXPECT_EQ(b_passes[k], b_passes[k - 1] + 1) << "B's chunks in consecutive passes";
  }
  // B decodes from the pass after its last chunk: its first token came from that chunk
  ASSERT_GT(passes.size(), b_passes.back() + 1);
  const EnginePass& after = passes[b_passes.back() + 1];
  EXPECT_TRUE(std::any_of(after.begin(), after.end(), [&](const EngineTraceRows& r) {
    return r.seq == b->number() && !r.prompt && r.pos == L;
  }));
  const EngineStats st = e.stats();
  EXPECT_EQ(st.prefill_chunk, chunk);
  EXPECT_EQ(st.prefill_passes, 1 + int64_t(b_passes.size()));  // A's prompt, then B's chunks
}
