#pragma once
// The OpenAI-style completions API as data: a request parsed and checked into sequences, and the
// response (whole, or as server-sent-event chunks) built from their outputs. No HTTP here, so
// that tests can drive it directly.
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.hpp"
#include "serve/engine.hpp"

namespace moelab {

// A request the server refuses: HTTP status and a one-line message.
struct ApiError : std::runtime_error {
  int status;
  ApiError(int s, const std::string& m) : std::runtime_error(m), status(s) {}
};

// A text prompt may hold at most this many bytes per position of the context; a longer one is
// refused before it is tokenized (no tokenizer of ours gives fewer than 1 token per 32 bytes of
// ordinary text).
constexpr int64_t kTextBytesPerPosition = 32;

struct ApiLimits {
  int64_t max_len = 0;        // positions per sequence (the engine's)
  int64_t vocab = 0;          // the tokenizer's ids
  int64_t max_n = 16;         // choices per prompt
  int64_t max_prompts = 256;  // prompts per request
  int64_t max_logprobs = 20;
  // What a body may hold before anything is parsed or tokenized (api_limits sets them).
  int64_t max_text_bytes = 0;      // one text prompt of /v1/completions: max_len * 32
  int64_t max_tokenize_bytes = 0;  // the text of /tokenize: max(256 KiB, max_text_bytes)
  int64_t max_json_depth = 16;     // nesting of arrays and objects
  int64_t max_json_values = 0;     // values (ids, strings, lists...): max_prompts * max_len + 4096
};
// The limits of a context of `max_len` positions and `vocab` ids.
ApiLimits api_limits(int64_t max_len, int64_t vocab);

// The text bytes tokenized at once by all request threads together. Tokenizing takes about a
// hundred times a text's size in memory for a moment, so large texts take turns: take(n) waits
// until n bytes (at most the whole budget) are free and holds them until the Hold ends.
class TokenizeBudget {
 public:
  explicit TokenizeBudget(int64_t bytes) : total_(bytes), free_(bytes) {}
  class Hold {
   public:
    Hold(TokenizeBudget* b, int64_t n) : b_(b), n_(n) {}
    Hold(Hold&& o) noexcept : b_(std::exchange(o.b_, nullptr)), n_(o.n_) {}
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    Hold& operator=(Hold&&) = delete;
    ~Hold();

   private:
    TokenizeBudget* b_;
    int64_t n_;
  };
  Hold take(int64_t n);
  int64_t total() const { return total_; }

 private:
  const int64_t total_;
  int64_t free_;
  std::mutex mu_;
  std::condition_variable cv_;
};

// What the API needs to know of the model and tokenizer, built once.
struct ApiContext {
  const Tokenizer* tok = nullptr;
  ApiLimits lim;
  std::string model;                       // the name /v1/models lists
  std::vector<std::string> texts;          // [vocab] each token's text as it reads inside a text
  std::vector<std::string> texts_json;     // [vocab] the same as JSON strings (quoted, escaped)
  std::shared_ptr<TokenizeBudget> budget;  // none: texts are tokenized at once
  bool allow_unknown_fields = false;       // unknown fields ignored (listed), not refused
};
ApiContext api_context(const Tokenizer& tok, const ApiLimits& lim, std::string model);

struct CompletionRequest {
  std::string model;
  std::vector<std::vector<int32_t>> prompts;  // each at least one id
  std::vector<std::string> prompt_texts;      // as given, or decoded from ids (echo)
  int64_t n = 1;
  int64_t best_of = 1;  // candidates per prompt (>= n): the n of highest summed log-probability
  bool stream = false;
  SeqSpec seq;                       // what every sequence shares (its prompt is filled per prompt)
  std::vector<std::string> ignored;  // unknown fields, with allow_unknown_fields
};

// The fields POST /v1/completions reads: every other one is refused (400 naming it), unless
// cx.allow_unknown_fields, where an unknown one is ignored; "suffix" and "stream_options"
// (OpenAI's, not supported here) are refused either way.
extern const std::vector<std::string> kCompletionFields;

// A request body as a JSON object: ApiError(400) when it holds a NUL byte, nests deeper than
// lim.max_json_depth, holds more than lim.max_json_values values (all checked in one pass before
// parsing, so that no shape of body costs more memory than a bounded multiple of its size), is not
// one valid JSON text, or is not an object.
nlohmann::json api_parse_body(const std::string& body, const ApiLimits& lim);

// Parses the body of POST /v1/completions; ApiError(400) names the field on any problem, and
// ApiError(404) a "model" other than the served one. A request without "seed" is sampled with
// `default_seed` (all 64 bits; candidate j with + j).
CompletionRequest api_parse_completion(const std::string& body, const ApiContext& cx,
                                       uint64_t default_seed);

// The sequences of a request: prompt p's candidate j is sequence p * best_of + j, sampled with
// seed + j (without best_of, candidate j is choice p * n + j).
std::vector<std::shared_ptr<Sequence>> api_sequences(const CompletionRequest& r);

// For each prompt, the candidates returned, best first: the n of highest SeqOutput::score (the
// summed log-probability of the new tokens and of the end token where one ended the candidate;
// ties: the lower candidate; NaN last), or all n in order without best_of. Indices into outs
// (prompts x best_of, in api_sequences' order).
std::vector<size_t> api_choose_candidates(const CompletionRequest& r,
                                          const std::vector<SeqOutput>& outs);

// The whole response of a finished request (outputs in api_sequences' order), as JSON text;
// usage counts the tokens of every candidate, returned or not.
std::string api_completion_response(const CompletionRequest& r, const std::vector<SeqOutput>& outs,
                                    const ApiContext& cx, const std::string& id, int64_t created);

// One server-sent-event chunk of choice `index`: `text`, the log-probabilities of the tokens
// [from, to) of out (echo: from the prompt's when `prompt`), and the finish reason when `last`;
// JSON text.
std::string api_stream_chunk(const CompletionRequest& r, int64_t index, const SeqOutput& out,
                             bool prompt, size_t from, size_t to, const std::string& text,
                             bool last, const ApiContext& cx, const std::string& id,
                             int64_t created);

// Text as the tokenizer reads it, with every special token's name (e.g. "</s>", "<s>",
// "<|endoftext|>") becoming its id, as a client that tokenizes remotely expects
// (tokenizer_encode_text; /detokenize writes them back by name).
std::vector<int32_t> api_encode(const Tokenizer& tok, const std::string& text);
// The same within the context's tokenize budget.
std::vector<int32_t> api_encode(const ApiContext& cx, const std::string& text);

// The body of /tokenize or /detokenize holds only `fields` (ApiError(400) naming any other,
// unless cx.allow_unknown_fields: then the names come back, to be logged); "model" must be the
// served one (ApiError(404)); "add_special_tokens" and "return_token_strs" must be booleans.
std::vector<std::string> api_check_tool_fields(const nlohmann::json& j, const ApiContext& cx,
                                               std::span<const std::string_view> fields);

// A JSON list of token ids, each within [0, vocab); ApiError(400) naming `field` otherwise.
std::vector<int32_t> api_token_ids(const nlohmann::json& a, int64_t vocab, const char* field);

// The tokenizer's name as clients see it: a file path in it is cut to its last component.
std::string api_tokenizer_name(const std::string& name);

// {"error": {"message": m, "type": ..., "code": status}} dumped on one line.
std::string api_error_body(int status, const std::string& message);

// JSON text that never fails on invalid UTF-8 in token texts (replaced by U+FFFD).
std::string api_dump(const nlohmann::json& j);

}  // namespace moelab
