#include "eval/generate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "eval/decode.hpp"
#include "eval/metrics.hpp"

namespace moelab {

namespace {

constexpr uint64_t kSampleStream = 0x67656e6572617465ull;  // "generate": the draws of sampling
constexpr int64_t kPromptTail = 16;  // prompt ids decoded before the new ones (see new_text)

}  // namespace

void generate_check(const GenerateOptions& o) {
  if (o.max_new < 1) {
    fail(fmt::format("generate: --max-new must be at least 1 (not {})", o.max_new));
  }
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) {
    fail(fmt::format("generate: --temperature must be >= 0 (not {})", o.temperature));
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) {
    fail(fmt::format("generate: --top-p must be in (0, 1] (not {})", o.top_p));
  }
  if (o.top_k < 0) {
    fail(fmt::format("generate: --top-k must be >= 0 (not {})", o.top_k));
  }
  for (const auto& s : o.stop) {
    if (s.empty()) {
      fail("generate: --stop: an empty stop string");
    }
  }
  if (!(std::fabs(o.presence_penalty) <= 2)) {
    fail(fmt::format("generate: presence_penalty must be in [-2, 2] (not {})", o.presence_penalty));
  }
  if (!(std::fabs(o.frequency_penalty) <= 2)) {
    fail(fmt::format("generate: frequency_penalty must be in [-2, 2] (not {})",
                     o.frequency_penalty));
  }
  for (const auto& [id, b] : o.logit_bias) {
    if (id < 0 || !(std::fabs(b) <= 100)) {
      fail(fmt::format("generate: logit_bias: id {} with bias {} (ids >= 0, biases in [-100, 100])",
                       id, b));
    }
  }
  // each id once: two biases of one id would both be added, past the [-100, 100] bound
  std::vector<int32_t> ids;
  ids.reserve(o.logit_bias.size());
  for (const auto& [id, b] : o.logit_bias) {
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  const auto twice = std::adjacent_find(ids.begin(), ids.end());
  if (twice != ids.end()) {
    fail(fmt::format("generate: logit_bias: id {} has more than one bias", *twice));
  }
}

// ----------------------------------------------------------------------------
// the sampler

std::vector<std::pair<int32_t, double>> sample_distribution(std::span<const float> z,
                                                            const GenerateOptions& o) {
  const int64_t n = int64_t(z.size());
  check(n >= 1 && o.temperature > 0, "sample_distribution: no logits or temperature 0");
  const float mx = z[size_t(logits_argmax(z.data(), n))];
  std::vector<std::pair<int32_t, double>> p(static_cast<size_t>(n));  // [n] (id, probability)
  double sum = 0;
  for (int64_t v = 0; v < n; v++) {
    const double e = std::exp((double(z[size_t(v)]) - double(mx)) / o.temperature);
    p[size_t(v)] = {int32_t(v), e};
    sum += e;
  }
  for (auto& [v, q] : p) q /= sum;
  auto more_probable = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  // most probable first, as far as the cuts need it
  if (o.top_k > 0 && o.top_k < n) {
    std::partial_sort(p.begin(), p.begin() + o.top_k, p.end(), more_probable);
    p.resize(size_t(o.top_k));
  } else if (o.top_p < 1) {
    std::sort(p.begin(), p.end(), more_probable);
  }
  auto renormalise = [&p] {
    double s = 0;
    for (const auto& e : p) s += e.second;
    for (auto& e : p) e.second /= s;
  };
  renormalise();
  if (o.top_p < 1) {
    if (o.top_k > 0) std::sort(p.begin(), p.end(), more_probable);  // already, unless k >= n
    double cum = 0;
    size_t keep = 0;
    while (keep < p.size()) {
      cum += p[keep++].second;
      if (cum >= o.top_p) break;
    }
    p.resize(keep);
    renormalise();
  }
  return p;
}

void generate_adjust_logits(std::span<float> z, const GenerateOptions& o,
                            std::span<const int32_t> seen, std::span<const int64_t> counts) {
  for (const auto& [v, b] : o.logit_bias) {
    if (size_t(v) < z.size()) {
      z[size_t(v)] = float(double(z[size_t(v)]) + b);
    }
  }
  for (const int32_t v : seen) {
    z[size_t(v)] = float(double(z[size_t(v)]) - double(counts[size_t(v)]) * o.frequency_penalty -
                         o.presence_penalty);
  }
}

int32_t sample_next(std::span<const float> z, const GenerateOptions& o, int64_t step) {
  check(!z.empty(), "sample_next: no logits");
  if (o.greedy || o.temperature == 0) return logits_argmax(z.data(), int64_t(z.size()));
  const auto p = sample_distribution(z, o);
  const double u = rng_uniform(o.seed, kSampleStream, uint64_t(step));
  double cum = 0;
  for (const auto& [v, q] : p) {
    cum += q;
    if (u < cum) return v;
  }
  return p.back().first;  // u within rounding of 1
}

// ----------------------------------------------------------------------------
// the text stream

namespace {

// The length of s without a trailing incomplete UTF-8 sequence or U+FFFD.
size_t utf8_settled(const std::string& s) {
  const size_t n = s.size();
  if (n >= 3 && s.compare(n - 3, 3, "\xEF\xBF\xBD") == 0) return n - 3;
  for (size_t back = 1; back <= std::min<size_t>(n, 4); back++) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    return len > back ? n - back : n;
  }
  return n;  // stray continuation bytes: nothing would complete them
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  std::erase(stop_, std::string());  // an empty string would stop before the first token
}

std::string TextStream::update(const std::string& text) {
  if (stopped_) return {};
  text_ = text;
  // A decoder may rewrite the held-back tail (U+FFFD becoming a character); what was printed
  // is normally a prefix of the new text, and printing goes on from its length regardless.
  const size_t done = std::min(out_.size(), text_.size());
  size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, text_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string piece = text_.substr(done, std::max(cut, done) - done);
    out_ += piece;
    return piece;
  }
  size_t safe = utf8_settled(text_);
  for (const auto& s : stop_)  // the earliest tail that is a proper prefix of a stop string
    for (size_t k = s.empty() ? 0 : std::min(s.size() - 1, text_.size()); k >= 1; k--)
      if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
        safe = std::min(safe, text_.size() - k);
        break;
      }
  if (safe <= done) return {};
  std::string piece = text_.substr(done, safe - done);
  out_ += piece;
  return piece;
}

std::string TextStream::finish() {
  if (stopped_ || out_.size() >= text_.size()) return {};
  std::string piece = text_.substr(out_.size());
  out_ += piece;
  return piece;
}

// ----------------------------------------------------------------------------
// generation

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length:
      return "length";
    case FinishReason::Eot:
      return "eot";
    case FinishReason::Stop:
      return "stop";
  }
  return "?";
}

namespace {

// The text of the new ids as it reads after the prompt: decoded behind the prompt's last ids
// (tail) and cut after theirs, so that a piece's leading space (SentencePiece drops it at the
// start of a text) is kept; the new ids alone when that is not a prefix.
std::string new_text(const Tokenizer& tok, std::span<const int32_t> tail,
                     std::span<const int32_t> ids) {
  std::vector<int32_t> all(tail.begin(), tail.end());
  all.insert(all.end(), ids.begin(), ids.end());
  const std::string base = tokenizer_decode_text(tok, tail), full = tokenizer_decode_text(tok, all);
  if (full.compare(0, base.size(), base) == 0) return full.substr(base.size());
  return tokenizer_decode_text(tok, ids);
}

}  // namespace

Continuation::Continuation(const Tokenizer& tok, std::span<const int32_t> prompt, GenerateOptions o)
    : tok_(tok), o_(std::move(o)), stream_(o_.stop) {
  const auto tail = prompt.last(size_t(std::min<int64_t>(int64_t(prompt.size()), kPromptTail)));
  tail_.assign(tail.begin(), tail.end());
  done_ = o_.max_new < 1;
}

std::pair<int32_t, std::string> Continuation::push(std::span<const float> logits) {
  check(!done_, "generate: a step after the end");
  // choices among the ids the tokenizer decodes, as evaluate() does
  const size_t Vd = size_t(std::min<int64_t>(int64_t(logits.size()), tok_.vocab_size()));
  check(Vd >= 1, "generate: the tokenizer has no ids");
  std::span<const float> z = logits.first(Vd);
  const bool penalties = o_.presence_penalty != 0 || o_.frequency_penalty != 0;
  if (penalties || !o_.logit_bias.empty()) {
    adjusted_.assign(z.begin(), z.end());
    generate_adjust_logits(adjusted_, o_, seen_, counts_);
    z = adjusted_;
  }
  const int32_t id = sample_next(z, o_, steps_++);
  if (id == tok_.eot_id()) {
    end(FinishReason::Eot);
    return {id, {}};
  }
  r_.tokens.push_back(id);
  if (penalties) {
    if (counts_.size() < Vd) {
      counts_.resize(Vd, 0);
    }
    if (counts_[size_t(id)]++ == 0) {
      seen_.push_back(id);
    }
  }
  std::string piece = stream_.update(new_text(tok_, tail_, r_.tokens));
  if (stream_.stopped())
    end(FinishReason::Stop);
  else if (steps_ >= o_.max_new)
    end(FinishReason::Length);
  return {id, std::move(piece)};
}

void Continuation::end(FinishReason r) {
  if (!done_) r_.reason = r;
  done_ = true;
}

std::string Continuation::finish() {
  std::string rest = stream_.finish();
  r_.text = stream_.text();
  return rest;
}

GenerateResult generate(const Model<float>& model, const Tokenizer& tok,
                        std::span<const int32_t> prompt, const GenerateOptions& o,
                        const GenerateCallback& on_token) {
  generate_check(o);
  const ModelConfig& c = model.cfg;
  const int64_t plen = int64_t(prompt.size());
  if (plen < 1) fail("generate: the prompt has no tokens");
  const int64_t ctx = c.max_position_embeddings;
  // the server's rules at the context's end (serve/api, serve/engine): a prompt longer than the
  // context, or more new tokens than it, is refused; a prompt that leaves less room than max_new
  // ends where the positions run out, with FinishReason::Length
  if (plen > ctx)
    fail(fmt::format("generate: the prompt has {} tokens, more than the model's context ({})", plen,
                     ctx));
  if (o.max_new > ctx)
    fail(fmt::format("generate: --max-new must be at most the model's context ({}) (not {})", ctx,
                     o.max_new));
  // the last new token is never fed back: plen + max_new - 1 positions, or the whole context
  const int64_t positions = std::min(plen + o.max_new - 1, ctx);
  Decoder dec(model, 1, positions);
  Continuation seq(tok, prompt, o);
  std::span<const float> logits = dec.prefill(prompt, plen, plen - 1);
  for (int64_t i = 0;; i++) {
    const auto [id, piece] = seq.push(logits);
    if (id == tok.eot_id()) break;
    // the next token would be fed at position plen + i: beyond the context, the end
    if (!seq.done() && plen + i >= positions) seq.end(FinishReason::Length);
    if (on_token) on_token(id, piece);
    if (seq.done()) break;
    logits = dec.step(std::span<const int32_t>(&id, 1), plen + i);
  }
  const std::string rest = seq.finish();
  if (on_token && !rest.empty()) on_token(-1, rest);
  return seq.result();
}

}  // namespace moelab
