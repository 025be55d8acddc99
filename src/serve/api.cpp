#include "serve/api.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace moelab {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& m) {
  throw ApiError(400, m);
}

// ----------------------------------------------------------------------------
// fields: each typed getter names the field it refuses

const json* field(const json& j, const char* name) {
  const auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

// An integer in [lo, hi], compared exactly: 2^63 (an unsigned JSON number) is refused, never
// wrapped; a number written with a fraction or exponent, or beyond int64 (which JSON readers
// take as a float), must be an integer below 2^53 in magnitude, where floats are exact.
int64_t get_int(const json& j, const char* name, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_number_integer() && !(v->is_number_float() && std::isfinite(v->get<double>()) &&
                                   std::trunc(v->get<double>()) == v->get<double>()))
    bad(fmt::format("{}: must be an integer", name));
  auto out_of_range = [&] {
    bad(fmt::format("{}: must be in [{}, {}] (not {})", name, lo, hi, v->dump()));
  };
  int64_t x = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) out_of_range();
    x = int64_t(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else {
    const double d = v->get<double>();
    if (!(std::fabs(d) < 0x1p53)) out_of_range();
    x = int64_t(d);
  }
  if (x < lo || x > hi) out_of_range();
  return x;
}

double get_number(const json& j, const char* name, double def, double lo, double hi) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_number()) bad(fmt::format("{}: must be a number", name));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(fmt::format("{}: must be in [{}, {}] (not {})", name, lo, hi, x));
  return x;
}

bool get_bool(const json& j, const char* name, bool def) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_boolean()) bad(fmt::format("{}: must be true or false", name));
  return v->get<bool>();
}

std::vector<std::string> get_stop(const json& j) {
  const json* v = field(j, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& s : *v) {
      if (!s.is_string()) bad("stop: must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    bad("stop: must be a string or a list of strings");
  }
  if (out.size() > 16) bad("stop: at most 16 strings");
  std::erase(out, std::string());
  return out;
}

// A prompt of ids: every id within the tokenizer's vocabulary.
std::vector<int32_t> ids_prompt(const json& a, const ApiLimits& lim, const char* where) {
  if (a.empty()) bad(fmt::format("{}: an empty list of token ids", where));
  return api_token_ids(a, lim.vocab, where);
}

// prompt: a text, a list of ids, or a list of either
void parse_prompts(const json& j, const ApiContext& cx, CompletionRequest& r) {
  const Tokenizer& tok = *cx.tok;
  const ApiLimits& lim = cx.lim;
  const json* p = field(j, "prompt");
  if (!p) bad("prompt: missing");
  // each prompt checked as it comes, so that a long list stops at its first prompt too long
  auto fits = [&] {
    const size_t i = r.prompts.size() - 1;
    const int64_t n = int64_t(r.prompts[i].size());
    if (n == 0) bad(fmt::format("prompt: prompt {} has no tokens", i));
    if (n > lim.max_len)
      bad(fmt::format("prompt: prompt {} has {} tokens, more than the model's context ({})", i, n,
                      lim.max_len));
  };
  auto add_text = [&](const std::string& text) {
    if (int64_t(text.size()) > lim.max_text_bytes)
      bad(fmt::format(
          "prompt: prompt {} is a text of {} bytes, more than the model's context "
          "takes ({} positions x {} bytes = {})",
          r.prompts.size(), text.size(), lim.max_len, kTextBytesPerPosition, lim.max_text_bytes));
    r.prompts.push_back(api_encode(cx, text));
    r.prompt_texts.push_back(text);
    fits();
  };
  auto add_ids = [&](const json& a) {
    r.prompts.push_back(ids_prompt(a, lim, "prompt"));
    fits();
    r.prompt_texts.push_back(tokenizer_decode_text(tok, r.prompts.back()));
  };
  if (p->is_string()) {
    add_text(p->get<std::string>());
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    add_ids(*p);
  } else if (p->is_array() && !p->empty()) {
    if (int64_t(p->size()) > lim.max_prompts)
      bad(fmt::format("prompt: at most {} prompts per request", lim.max_prompts));
    for (const auto& e : *p) {
      if (e.is_string())
        add_text(e.get<std::string>());
      else if (e.is_array())
        add_ids(e);
      else
        bad("prompt: a list must hold texts or lists of token ids");
    }
  } else {
    bad("prompt: must be a text, a list of token ids, or a non-empty list of either");
  }
}

}  // namespace

// ----------------------------------------------------------------------------
// the request

ApiLimits api_limits(int64_t max_len, int64_t vocab) {
  ApiLimits lim;
  lim.max_len = max_len, lim.vocab = vocab;
  lim.max_text_bytes = max_len * kTextBytesPerPosition;
  lim.max_tokenize_bytes = std::max<int64_t>(int64_t(256) << 10, lim.max_text_bytes);
  lim.max_json_values = lim.max_prompts * max_len + 4096;
  return lim;
}

json api_parse_body(const std::string& body, const ApiLimits& lim) {
  // One pass over the text: strings skipped (escapes included), brackets counted for the depth,
  // and each value counted where it starts (after '[', '{', ',', ':' or at the beginning).
  int64_t depth = 0, values = 0;
  bool in_string = false, escaped = false, expect_value = true;
  for (const char c : body) {
    if (c == '\0') bad("the body holds a NUL byte");
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (expect_value && ++values > lim.max_json_values)
      bad(fmt::format("the body holds more than {} JSON values", lim.max_json_values));
    expect_value = false;
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > lim.max_json_depth)
        bad(fmt::format("the body nests JSON deeper than {} levels", lim.max_json_depth));
      expect_value = true;
    } else if (c == ']' || c == '}') {
      depth--;
    } else if (c == ',' || c == ':') {
      expect_value = true;
    }
  }
  // Without NUL bytes the parser reads the whole text: anything after the value is an error.
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) bad("the body is not valid JSON");
  if (!j.is_object()) bad("the body must be a JSON object");
  return j;
}

const std::vector<std::string> kCompletionFields = {
    "model",      "prompt",  "max_tokens", "temperature",      "top_p",
    "top_k",      "seed",    "stop",       "logprobs",         "echo",
    "n",          "best_of", "stream",     "presence_penalty", "frequency_penalty",
    "logit_bias", "user"};

namespace {

// Every field of the body is one this server reads, or is refused by name (a field ignored
// silently would run a request other than the one the client meant, e.g. a penalty not applied).
void check_fields(const json& j, const ApiContext& cx, CompletionRequest& r) {
  for (const auto& [name, value] : j.items()) {
    if (std::find(kCompletionFields.begin(), kCompletionFields.end(), name) !=
        kCompletionFields.end()) {
      continue;
    }
    if (name == "suffix" || name == "stream_options") {
      bad(fmt::format("{}: not supported by this server", name));
    }
    if (cx.allow_unknown_fields) {
      r.ignored.push_back(name);
      continue;
    }
    bad(fmt::format(
        "{}: unknown field (this server reads {}; moelab serve --allow-unknown-fields "
        "ignores unknown ones)",
        name.size() > 64 ? name.substr(0, 64) + "..." : name, fmt::join(kCompletionFields, ", ")));
  }
}

// logit_bias: {"id": bias, ...}, ids as decimal strings within the vocabulary, biases in
// [-100, 100]
std::vector<std::pair<int32_t, double>> get_logit_bias(const json& j, int64_t vocab) {
  const json* v = field(j, "logit_bias");
  if (!v) {
    return {};
  }
  if (!v->is_object()) {
    bad("logit_bias: must be an object of token ids (as strings) to biases");
  }
  std::vector<std::pair<int32_t, double>> out;
  for (const auto& [key, b] : v->items()) {
    const std::string shown = key.size() > 24 ? key.substr(0, 24) + "..." : key;
    if (key.empty() || key.size() > 10 ||
        key.find_first_not_of("0123456789") != std::string::npos) {
      bad(fmt::format("logit_bias: key '{}' is not a token id", shown));
    }
    // One spelling per id: "1" and "01" are different JSON keys, and both biases would be added
    // to the same logit (past the [-100, 100] bound).
    if (key.size() > 1 && key[0] == '0') {
      bad(fmt::format("logit_bias: key '{}' has a leading zero (write token ids as '{}')", shown,
                      std::stoll(key)));
    }
    const int64_t id = std::stoll(key);
    if (id >= vocab) {
      bad(fmt::format("logit_bias: token id {} is outside the vocabulary [0, {})", id, vocab));
    }
    if (!b.is_number() || !(std::fabs(b.get<double>()) <= 100)) {
      bad(fmt::format("logit_bias: the bias of token {} must be a number in [-100, 100] (not {})",
                      id, b.dump()));
    }
    out.emplace_back(int32_t(id), b.get<double>());
  }
  return out;
}

}  // namespace

std::vector<std::string> api_check_tool_fields(const json& j, const ApiContext& cx,
                                               std::span<const std::string_view> fields) {
  std::vector<std::string> ignored;
  for (const auto& [name, value] : j.items()) {
    if (std::find(fields.begin(), fields.end(), name) != fields.end()) {
      continue;
    }
    if (!cx.allow_unknown_fields) {
      bad(fmt::format(
          "{}: unknown field (this route reads {}; moelab serve "
          "--allow-unknown-fields ignores unknown ones)",
          name.size() > 64 ? name.substr(0, 64) + "..." : name, fmt::join(fields, ", ")));
    }
    ignored.push_back(name);
  }
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) {
      bad("model: must be a string");
    }
    const auto& name = m->get_ref<const std::string&>();
    if (name != cx.model) {
      throw ApiError(404,
                     fmt::format("model: '{}' is not served here (this server serves '{}', "
                                 "moelab serve --name)",
                                 name.size() > 64 ? name.substr(0, 64) + "..." : name, cx.model));
    }
  }
  // The tokenizers add no BOS or other special token to a text, so both values give the same
  // ids; a client's explicit choice is read, not ignored, and must at least be a boolean.
  for (const char* flag : {"add_special_tokens", "return_token_strs"}) {
    if (const json* f = field(j, flag); f && !f->is_boolean()) {
      bad(fmt::format("{}: must be true or false", flag));
    }
  }
  return ignored;
}

CompletionRequest api_parse_completion(const std::string& body, const ApiContext& cx,
                                       uint64_t default_seed) {
  const ApiLimits& lim = cx.lim;
  const json j = api_parse_body(body, lim);
  CompletionRequest r;
  check_fields(j, cx, r);
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("model: must be a string");
    r.model = m->get<std::string>();
    if (r.model != cx.model)
      throw ApiError(404, fmt::format("model: '{}' is not served here (this server serves '{}', "
                                      "moelab serve --name)",
                                      r.model.size() > 64 ? r.model.substr(0, 64) + "..." : r.model,
                                      cx.model));
  }
  if (const json* u = field(j, "user"); u && !u->is_string()) bad("user: must be a string");
  parse_prompts(j, cx, r);
  SeqSpec& s = r.seq;
  s.gen.max_new = get_int(j, "max_tokens", 16, 0, lim.max_len);
  s.gen.temperature = get_number(j, "temperature", 1.0, 0, 1e6);
  s.gen.top_p = get_number(j, "top_p", 1.0, 0, 1);
  if (s.gen.top_p <= 0) bad("top_p: must be in (0, 1]");
  s.gen.top_k = get_int(j, "top_k", 0, -1, std::numeric_limits<int32_t>::max());
  if (s.gen.top_k < 0) s.gen.top_k = 0;  // -1: off, as some servers spell it
  s.gen.seed = field(j, "seed")
                   ? uint64_t(get_int(j, "seed", 0, std::numeric_limits<int64_t>::min(),
                                      std::numeric_limits<int64_t>::max()))
                   : default_seed;
  s.gen.stop = get_stop(j);
  s.logprobs = get_int(j, "logprobs", -1, 0, lim.max_logprobs);
  s.echo = get_bool(j, "echo", false);
  s.gen.presence_penalty = get_number(j, "presence_penalty", 0, -2, 2);
  s.gen.frequency_penalty = get_number(j, "frequency_penalty", 0, -2, 2);
  s.gen.logit_bias = get_logit_bias(j, lim.vocab);
  r.n = get_int(j, "n", 1, 1, lim.max_n);
  r.stream = get_bool(j, "stream", false);
  r.best_of = get_int(j, "best_of", r.n, 1, lim.max_n);
  if (r.best_of < r.n)
    bad(fmt::format("best_of: must be at least n ({}) (not {})", r.n, r.best_of));
  if (r.stream && r.best_of > r.n) bad("best_of: cannot be larger than n with stream");
  s.rank = r.best_of > r.n;
  if (s.gen.max_new == 0 && !s.echo) bad("max_tokens: 0 is only useful with echo");
  return r;
}

std::vector<std::shared_ptr<Sequence>> api_sequences(const CompletionRequest& r) {
  std::vector<std::shared_ptr<Sequence>> seqs;
  for (const auto& prompt : r.prompts)
    for (int64_t j = 0; j < r.best_of; j++) {
      SeqSpec s = r.seq;
      s.prompt = prompt;
      s.gen.seed += uint64_t(j);
      seqs.push_back(std::make_shared<Sequence>(std::move(s)));
    }
  return seqs;
}

// ----------------------------------------------------------------------------
// tokens as text

std::vector<int32_t> api_token_ids(const json& a, int64_t vocab, const char* field) {
  if (!a.is_array()) bad(fmt::format("{}: must be a list of token ids", field));
  std::vector<int32_t> ids;
  for (const auto& t : a) {
    if (!t.is_number_integer()) bad(fmt::format("{}: token ids must be integers", field));
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id >= vocab)
      bad(fmt::format("{}: token id {} is outside the vocabulary [0, {})", field, id, vocab));
    ids.push_back(int32_t(id));
  }
  return ids;
}

std::vector<int32_t> api_encode(const Tokenizer& tok, const std::string& text) {
  return tokenizer_encode_text(tok, text);
}

TokenizeBudget::Hold TokenizeBudget::take(int64_t n) {
  n = std::clamp<int64_t>(n, 0, total_);
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return free_ >= n; });
  free_ -= n;
  return Hold(this, n);
}

TokenizeBudget::Hold::~Hold() {
  if (!b_) return;
  {
    std::lock_guard lock(b_->mu_);
    b_->free_ += n_;
  }
  b_->cv_.notify_all();
}

std::vector<int32_t> api_encode(const ApiContext& cx, const std::string& text) {
  if (!cx.budget) return api_encode(*cx.tok, text);
  const auto hold = cx.budget->take(int64_t(text.size()));
  return api_encode(*cx.tok, text);
}

ApiContext api_context(const Tokenizer& tok, const ApiLimits& lim, std::string model) {
  ApiContext cx{&tok, lim, std::move(model), {}, {}, nullptr};
  // Each token's text decoded behind an anchor, so that a SentencePiece piece keeps the space it
  // begins with (decoded alone, a text's first piece loses it).
  const std::vector<int32_t> anchor = tok.encode("a");
  const std::string base = anchor.size() == 1 ? tok.decode(anchor) : "";
  // the end-of-text id may lie beyond the ordinary ids
  const int64_t n = std::max<int64_t>(tok.vocab_size(), int64_t(tok.eot_id()) + 1);
  cx.texts.resize(size_t(n));
  for (int32_t v = 0; v < int32_t(n); v++) {
    std::string& text = cx.texts[size_t(v)];
    if (tok.specials().is_special(v)) {  // written by its name, as /detokenize writes it
      text = tok.specials().name_of[size_t(v)];
      continue;
    }
    if (anchor.size() == 1) {
      const int32_t pair[2] = {anchor[0], v};
      const std::string both = tok.decode(pair);
      if (both.compare(0, base.size(), base) == 0) {
        text = both.substr(base.size());
        continue;
      }
    }
    text = tok.decode(std::span<const int32_t>(&v, 1));
  }
  cx.texts_json.reserve(cx.texts.size());
  for (const std::string& t : cx.texts) {
    cx.texts_json.push_back(json(t).dump(-1, ' ', false, json::error_handler_t::replace));
  }
  return cx;
}

// ----------------------------------------------------------------------------
// the response

namespace {

// The response is written as text directly: a scoring answer holds a few numbers and strings
// per prompt token, and building a JSON tree of them cost more than the model's work. Token
// texts are escaped once (ApiContext::texts_json).
using Out = std::string;

void put_raw(Out& o, std::string_view s) {
  o.append(s);
}

// a JSON string in ASCII-safe form: invalid UTF-8 replaced by U+FFFD, as api_dump writes it
void put_string(Out& o, const std::string& s) {
  o += json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// a number as JSON reads it back exactly (the shortest round-trip form); NaN and infinities,
// which JSON cannot hold, as null (as api_dump writes them)
void put_double(Out& o, double x) {
  if (!std::isfinite(x)) {
    o += "null";
    return;
  }
  char buf[32];
  const auto end = fmt::format_to(buf, "{}", x);
  const std::string_view v(buf, size_t(end - buf));
  o += v;
  if (v.find_first_of(".e") == std::string_view::npos) {
    o += ".0";  // stays a float for a client that looks at types
  }
}

void put_int(Out& o, int64_t x) {
  char buf[24];
  const auto end = fmt::format_to(buf, "{}", x);
  o.append(buf, size_t(end - buf));
}

// Tokens [from, to) of a list, their text offsets counted from `offset`.
struct Tokens {
  const std::vector<TokenLogprob>* toks;
  size_t from, to, offset;
};

// The OpenAI "logprobs" object of the segments' tokens, one after another: {"tokens",
// "token_logprobs", "top_logprobs", "text_offset"}. A top_logprobs object lists the most probable
// first, a text that two ids share once (its best value), and the chosen token when it is not
// among them, as other servers do.
void put_logprobs(Out& o, std::span<const Tokens> segs, const ApiContext& cx) {
  // each token of every segment, in order
  auto each = [&](const auto& f) {
    bool first = true;
    for (const Tokens& g : segs) {
      size_t offset = g.offset;
      for (size_t i = g.from; i < g.to; i++) {
        const TokenLogprob& t = (*g.toks)[i];
        put_raw(o, first ? "" : ",");
        first = false;
        f(t, offset);
        offset += cx.texts[size_t(t.id)].size();
      }
    }
  };
  put_raw(o, "{\"tokens\":[");
  each([&](const TokenLogprob& t, size_t) { put_raw(o, cx.texts_json[size_t(t.id)]); });
  put_raw(o, "],\"token_logprobs\":[");
  each([&](const TokenLogprob& t, size_t) {
    if (t.has_logprob) {
      put_double(o, t.logprob);
    } else {
      put_raw(o, "null");
    }
  });
  put_raw(o, "],\"top_logprobs\":[");
  std::vector<int32_t> shown;  // ids whose text is in the object so far
  auto seen = [&](int32_t id) {
    return std::any_of(shown.begin(), shown.end(), [&](int32_t s) {
      return s == id || cx.texts[size_t(s)] == cx.texts[size_t(id)];
    });
  };
  auto entry = [&](int32_t id, double v) {
    put_raw(o, shown.empty() ? "" : ",");
    put_raw(o, cx.texts_json[size_t(id)]);
    put_raw(o, ":");
    put_double(o, v);
    shown.push_back(id);
  };
  each([&](const TokenLogprob& t, size_t) {
    if (!t.has_logprob) {
      put_raw(o, "null");
      return;
    }
    shown.clear();
    put_raw(o, "{");
    for (const auto& [id, v] : t.top) {
      if (!seen(id)) {
        entry(id, v);
      }
    }
    if (!seen(t.id)) {
      entry(t.id, t.logprob);
    }
    put_raw(o, "}");
  });
  put_raw(o, "],\"text_offset\":[");
  each([&](const TokenLogprob&, size_t offset) { put_int(o, int64_t(offset)); });
  put_raw(o, "]}");
}

void put_head(Out& o, const std::string& id, int64_t created, const ApiContext& cx) {
  put_raw(o, "{\"id\":");
  put_string(o, id);
  put_raw(o, ",\"object\":\"text_completion\",\"created\":");
  put_int(o, created);
  put_raw(o, ",\"model\":");
  put_string(o, cx.model);
}

}  // namespace

std::vector<size_t> api_choose_candidates(const CompletionRequest& r,
                                          const std::vector<SeqOutput>& outs) {
  const size_t B = size_t(r.best_of), N = size_t(r.n);
  check(outs.size() == r.prompts.size() * B, "api_choose_candidates: one output per candidate");
  // higher score first; a NaN score (a model that gave NaN logits) after every number, so that
  // the order stays a strict weak one
  auto better = [](const std::pair<double, size_t>& a, const std::pair<double, size_t>& b) {
    if (std::isnan(a.first)) {
      return false;
    }
    if (std::isnan(b.first)) {
      return true;
    }
    return a.first > b.first;
  };
  std::vector<size_t> chosen;
  for (size_t p = 0; p < r.prompts.size(); p++) {
    std::vector<std::pair<double, size_t>> c;  // (the candidate's score, candidate)
    for (size_t k = 0; k < B; k++) {
      c.emplace_back(outs[p * B + k].score, p * B + k);
    }
    if (B > N) {
      std::stable_sort(c.begin(), c.end(), better);
    }
    for (size_t j = 0; j < N; j++) {
      chosen.push_back(c[j].second);
    }
  }
  return chosen;
}

std::string api_completion_response(const CompletionRequest& r, const std::vector<SeqOutput>& outs,
                                    const ApiContext& cx, const std::string& id, int64_t created) {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (const SeqOutput& o : outs) {
    completion_tokens += int64_t(o.tokens.size());
  }
  for (const auto& prompt : r.prompts) {
    prompt_tokens += int64_t(prompt.size());
  }
  const std::vector<size_t> chosen = api_choose_candidates(r, outs);
  size_t bytes = 256;  // a guess of the size, so that the text grows once or twice
  for (size_t c : chosen) {
    bytes += 64 * (outs[c].prompt.size() + outs[c].tokens.size()) + outs[c].text.size();
  }
  Out o;
  o.reserve(bytes);
  put_head(o, id, created, cx);
  put_raw(o, ",\"choices\":[");
  for (size_t i = 0; i < chosen.size(); i++) {
    const SeqOutput& out = outs[chosen[i]];
    const size_t p = i / size_t(r.n);
    put_raw(o, i > 0 ? ",{\"index\":" : "{\"index\":");
    put_int(o, int64_t(i));
    put_raw(o, ",\"text\":");
    put_string(o, r.seq.echo ? r.prompt_texts[p] + out.text : out.text);
    put_raw(o, ",\"logprobs\":");
    if (r.seq.logprobs < 0) {
      put_raw(o, "null");
    } else {
      // echo: the prompt's tokens, then the new ones, whose offsets count from the prompt's
      // text as given
      const size_t start = r.seq.echo ? r.prompt_texts[p].size() : 0;
      const Tokens segs[2] = {{&out.prompt, 0, r.seq.echo ? out.prompt.size() : 0, 0},
                              {&out.tokens, 0, out.tokens.size(), start}};
      put_logprobs(o, segs, cx);
    }
    put_raw(o, ",\"finish_reason\":");
    put_string(o, out.finish_reason);
    put_raw(o, "}");
  }
  put_raw(o, "],\"usage\":{\"prompt_tokens\":");
  put_int(o, prompt_tokens);
  put_raw(o, ",\"completion_tokens\":");
  put_int(o, completion_tokens);
  put_raw(o, ",\"total_tokens\":");
  put_int(o, prompt_tokens + completion_tokens);
  put_raw(o, "}}");
  return o;
}

std::string api_stream_chunk(const CompletionRequest& r, int64_t index, const SeqOutput& out,
                             bool prompt, size_t from, size_t to, const std::string& text,
                             bool last, const ApiContext& cx, const std::string& id,
                             int64_t created) {
  Out o;
  put_head(o, id, created, cx);
  put_raw(o, ",\"choices\":[{\"index\":");
  put_int(o, index);
  put_raw(o, ",\"text\":");
  put_string(o, text);
  put_raw(o, ",\"logprobs\":");
  if (r.seq.logprobs >= 0) {
    const Tokens seg{prompt ? &out.prompt : &out.tokens, from, to, 0};
    put_logprobs(o, std::span(&seg, 1), cx);
  } else {
    put_raw(o, "null");
  }
  put_raw(o, ",\"finish_reason\":");
  if (last) {
    put_string(o, out.finish_reason);
  } else {
    put_raw(o, "null");
  }
  put_raw(o, "}]}");
  return o;
}

std::string api_tokenizer_name(const std::string& name) {
  // "sentencepiece:/data/x/tokenizer.model" -> "sentencepiece:tokenizer.model"
  const size_t colon = name.find(':');
  const size_t from = colon == std::string::npos ? 0 : colon + 1;
  const size_t slash = name.find_last_of('/');
  if (slash == std::string::npos || slash < from) return name;
  return name.substr(0, from) + name.substr(slash + 1);
}

std::string api_error_body(int status, const std::string& message) {
  const char* type = status == 503   ? "server_overloaded"
                     : status == 404 ? "not_found_error"
                     : status < 500  ? "invalid_request_error"
                                     : "server_error";
  return api_dump(json{{"error", {{"message", message}, {"type", type}, {"code", status}}}});
}

std::string api_dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace moelab
