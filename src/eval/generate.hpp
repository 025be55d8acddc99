#pragma once
// Text generation from a prompt: greedy (the evaluation decoder's choice, token for token) or
// sampled (temperature, top-k, top-p) with the counter-based RNG, so that a seed gives the same
// text on any machine. The new text is handed out as it is made, held back only where it could
// still change: an incomplete UTF-8 sequence, or a tail that may begin a stop string.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/tokenizer.hpp"
#include "model/model.hpp"

namespace moelab {

struct GenerateOptions {
  int64_t max_new = 64;      // tokens generated at most
  double temperature = 1.0;  // 0: greedy
  double top_p = 1.0;        // nucleus mass in (0, 1]; 1: off
  int64_t top_k = 0;         // 0: off
  uint64_t seed = 0;
  bool greedy = false;            // argmax, whatever the temperature
  std::vector<std::string> stop;  // generation ends where the text contains one (not output)
  // OpenAI's logit adjustments, applied before every choice (greedy or sampled), to the logits
  // only: logit[j] + bias[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty, c[j]
  // the times id j was generated so far (the prompt not counted).
  double presence_penalty = 0;                         // in [-2, 2]
  double frequency_penalty = 0;                        // in [-2, 2]
  std::vector<std::pair<int32_t, double>> logit_bias;  // (id, bias in [-100, 100])
};

// Fails with one line on options out of range (names as the command line spells them).
void generate_check(const GenerateOptions& o);

// ----------------------------------------------------------------------------
// the sampler

// The distribution a sampled step draws from, over the logits z [n]: softmax(z / T), then the
// k most probable ids, renormalised, then the smallest most-probable set whose mass reaches P,
// renormalised. (id, probability) pairs in the order the draw walks them (most probable first
// when top-k or top-p cut; id order otherwise). Ties go to the lower id, as in greedy decoding.
std::vector<std::pair<int32_t, double>> sample_distribution(std::span<const float> z,
                                                            const GenerateOptions& o);

// OpenAI's adjustments of one row of logits z [n], in place: logit_bias added, then the
// penalties of the ids `seen` (each generated counts[id] > 0 times so far) subtracted.
void generate_adjust_logits(std::span<float> z, const GenerateOptions& o,
                            std::span<const int32_t> seen, std::span<const int64_t> counts);

// The token chosen at step `step` (0 = the first new token): the argmax with --greedy or T = 0,
// else a draw from sample_distribution with the uniform rng_uniform(seed, stream, step).
int32_t sample_next(std::span<const float> z, const GenerateOptions& o, int64_t step);

// ----------------------------------------------------------------------------
// the text stream

// Turns the growing generated text into pieces safe to print: a trailing incomplete UTF-8
// sequence (or U+FFFD, which a byte-fallback decoder shows for one) and any tail that is the
// beginning of a stop string wait for the next token; a stop string ends the stream before it.
class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop);
  // `text`: all the generated text so far; returns what may now be printed after the earlier
  // pieces. After a stop string, stopped() and nothing more.
  std::string update(const std::string& text);
  std::string finish();  // the rest held back, at the end of generation
  bool stopped() const { return stopped_; }
  const std::string& text() const { return out_; }  // printed so far

 private:
  std::vector<std::string> stop_;
  std::string text_, out_;
  bool stopped_ = false;
};

// ----------------------------------------------------------------------------
// generation

enum class FinishReason { Length, Eot, Stop };
const char* finish_reason_name(FinishReason r);  // "length" | "eot" | "stop"

struct GenerateResult {
  std::vector<int32_t> tokens;  // the new ids (no end-of-text token)
  std::string text;             // the new text, cut before a stop string
  FinishReason reason = FinishReason::Length;
};

// One sequence's generation between model steps: chooses each next id from the logits of the
// model's step, grows the text and decides where it ends. generate() and the server's
// continuous batch (serve/engine) both run it, so they choose the same tokens.
class Continuation {
 public:
  // prompt: ids of tok (kept for the text's leading space); o checked by the caller
  Continuation(const Tokenizer& tok, std::span<const int32_t> prompt, GenerateOptions o);
  // logits [V] of the next position; returns the id chosen (among the ids tok decodes) and the
  // text that may now be printed. After it, done() may hold; the end-of-text id ends the
  // sequence without joining it.
  std::pair<int32_t, std::string> push(std::span<const float> logits);
  std::string finish();  // the text still held back, at the end
  bool done() const { return done_; }
  void end(FinishReason r);  // ends it from outside (e.g. the cache is full)
  const GenerateResult& result() const { return r_; }

 private:
  const Tokenizer& tok_;
  std::vector<int32_t> tail_;  // the prompt's last ids
  GenerateOptions o_;
  TextStream stream_;
  GenerateResult r_;
  std::vector<int64_t> counts_;  // [V] times each id was generated (with penalties only)
  std::vector<int32_t> seen_;    // the distinct ids generated, in order (with penalties only)
  std::vector<float> adjusted_;  // [V] the logits adjusted (with penalties or biases only)
  int64_t steps_ = 0;
  bool done_ = false;
};

// Called once per new token (id) with the text that may now be printed (often empty while
// bytes are held back), and, if anything was still held at the end, once more with id -1 and it.
using GenerateCallback = std::function<void(int32_t id, std::string_view text)>;

// Continues `prompt` (ids of `tok`, at least one, at most the model's positions; max_new at most
// the model's positions) until max_new tokens, the tokenizer's end-of-text token, a stop string
// or the context's end (the positions run out: FinishReason::Length, as the server ends it). Ids
// are chosen among those the tokenizer can decode (as evaluation does with a padded vocabulary).
GenerateResult generate(const Model<float>& model, const Tokenizer& tok,
                        std::span<const int32_t> prompt, const GenerateOptions& o,
                        const GenerateCallback& on_token = {});

}  // namespace moelab
