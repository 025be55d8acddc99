#pragma once
// The server's engine: one thread runs the model over a continuous batch. Sequences wait in a
// bounded queue, enter a free slot of the KV cache (a prefill: the prompt's log-probabilities
// when asked, and the first new token), then advance one token per step together with every
// other sequence in the batch, and leave when they end, freeing the slot for the next one. The
// tokens are chosen by the same Continuation as `moelab generate`.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data/tokenizer.hpp"
#include "eval/decode.hpp"
#include "eval/generate.hpp"
#include "model/model.hpp"

namespace moelab {

// A token with its log-probability under the model (log-softmax of the logits over the whole
// vocabulary, in double) and the N most probable tokens at its position.
struct TokenLogprob {
  int32_t id = 0;
  double logprob = 0;
  bool has_logprob = true;  // false for a prompt's first token: nothing predicts it
  std::vector<std::pair<int32_t, double>> top;  // most probable first
};

struct SeqSpec {
  std::vector<int32_t> prompt;  // at least one id
  GenerateOptions gen;          // gen.max_new may be 0: the prompt is only scored
  int64_t logprobs = -1;        // -1: none; N >= 0: each token's and the top N
  bool echo = false;            // the prompt's tokens (and log-probabilities) too
  bool rank = false;  // every new token's log-probability, even without logprobs (best_of)
};

// What a sequence has produced so far. The engine writes; the request's thread reads
// snapshots (wait) and may cancel.
struct SeqOutput {
  std::vector<TokenLogprob> prompt;  // echo with logprobs: one per prompt token
  std::vector<TokenLogprob> tokens;  // one per new token
  std::string text;                  // the new text that may be shown (held-back bytes excluded)
  std::string finish_reason;         // "length" | "stop", when done
  std::string error;                 // when it could not run (e.g. the server stopped)
  bool done = false;
  // With SeqSpec::rank: the summed log-probability of the new tokens and, when the end-of-text
  // token ended the sequence, of that token too (it is not one of `tokens`); best_of ranks by it.
  double score = 0;
};

class Sequence {
 public:
  explicit Sequence(SeqSpec s) : spec(std::move(s)) {}
  const SeqSpec spec;
  // Blocks until the sequence has more than `tokens` new tokens or more than `text` bytes of
  // text, or is done; returns a copy of its output.
  SeqOutput wait(size_t tokens, size_t text);
  // The same, waiting at most `timeout` (the copy may then hold nothing new).
  SeqOutput wait(size_t tokens, size_t text, std::chrono::milliseconds timeout);
  // Waits at most `timeout` for the sequence to be done; whether it is.
  bool wait_done(std::chrono::milliseconds timeout);
  void cancel();  // the client went away: the engine drops it at its next step

 private:
  friend class Engine;
  void update(const std::function<void(SeqOutput&)>& f);
  std::mutex mu_;
  std::condition_variable cv_;
  SeqOutput out_;
  bool cancelled_ = false;
};

struct EngineOptions {
  int64_t slots = 8;    // sequences decoded together (KV-cache slots)
  int64_t max_len = 0;  // positions per slot (0: the model's max_position_embeddings)
  int64_t queue = 256;  // sequences waiting for a slot at most; beyond: refused
};

struct EngineStats {
  int64_t running = 0, waiting = 0, slots = 0, max_len = 0, queue = 0, cache_bytes = 0;
  int64_t sequences = 0, prompt_tokens = 0, new_tokens = 0, steps = 0;
};

class Engine {
 public:
  Engine(const Model<float>& model, const Tokenizer& tok, EngineOptions o);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues the sequences of one request together, all or none: false when the queue has no
  // room for them or the engine is draining (the caller answers 503).
  bool submit(const std::vector<std::shared_ptr<Sequence>>& seqs);
  // Stops taking sequences; the waiting ones end with an error, the running ones finish.
  void drain();
  bool idle() const;
  EngineStats stats() const;
  int64_t max_len() const { return dec_.max_len(); }

 private:
  struct Slot {
    std::shared_ptr<Sequence> seq;
    std::unique_ptr<Continuation> cont;
    int64_t pos = 0;   // positions in the cache
    int32_t next = 0;  // the token to feed at pos
  };
  void loop();
  std::vector<std::vector<int64_t>> prefill_groups(std::vector<int64_t> slots) const;
  void admit(std::span<const int64_t> group);  // prefills the sequences of these slots
  void step();
  // the new token from logits [V]: chosen, scored, passed to the sequence; false when it ended
  bool advance(Slot& sl, std::span<const float> logits);
  void release(Slot& sl);
  void fail_slot(Slot& sl, const std::string& why);
  TokenLogprob score(std::span<const float> logits, int32_t id, int64_t top) const;

  const Model<float>& model_;
  const Tokenizer& tok_;
  EngineOptions o_;
  Decoder dec_;
  std::vector<Slot> slots_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  EngineStats stats_;
  bool draining_ = false, stop_ = false;
  std::thread thread_;
};

}  // namespace moelab
