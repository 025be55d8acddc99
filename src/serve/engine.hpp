#pragma once
// The server's engine: one thread runs the model over a continuous batch. Sequences wait in a
// bounded queue, enter a free slot of the KV cache, and are prefilled in chunks (the prompt's
// log-probabilities when asked, and the first new token), then advance one token per pass
// together with every other sequence in the batch, and leave when they end, freeing the slot for
// the next one. Each pass of the model holds one new token of every decoding sequence and at
// most `prefill_chunk` prompt tokens, so that a long prompt entering never stalls the others
// for longer than one chunk. The tokens are chosen by the same Continuation as `moelab
// generate`.
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
  // The output of a sequence that is done, moved out rather than copied (a scoring answer's
  // per-token lists): for its one reader, once.
  SeqOutput take();
  void cancel();  // the client went away: the engine drops it at its next step
  // The engine's number for it, from 0 in the order sequences were submitted (-1 before).
  int64_t number() const { return number_; }

 private:
  friend class Engine;
  int64_t number_ = -1;
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
  // prompt tokens per pass of the model at most (several prompts may share them; a longer
  // prompt takes several passes, each also advancing every decoding sequence)
  int64_t prefill_chunk = 512;
  bool trace = false;  // keep a record of every pass (Engine::trace), for tests
};

struct EngineStats {
  int64_t running = 0, waiting = 0, slots = 0, max_len = 0, queue = 0, cache_bytes = 0;
  int64_t sequences = 0, prompt_tokens = 0, new_tokens = 0;
  int64_t steps = 0;           // passes of the model
  int64_t prefill_chunk = 0;   // prompt tokens per pass at most
  int64_t prefill_passes = 0;  // passes that held prompt tokens
};

// One pass of the engine's model, with EngineOptions::trace: what each sequence fed.
struct EngineTraceRows {
  int64_t seq = 0;      // Sequence::number()
  int64_t pos = 0;      // the first position fed
  int64_t count = 0;    // positions fed (1 for a decoding step)
  bool prompt = false;  // prompt tokens (a prefill chunk) rather than a decoding step
};
using EnginePass = std::vector<EngineTraceRows>;

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
  // Every pass so far, oldest first (empty without EngineOptions::trace).
  std::vector<EnginePass> trace() const;

 private:
  struct Slot {
    std::shared_ptr<Sequence> seq;
    std::unique_ptr<Continuation> cont;  // set once the whole prompt is in the cache
    int64_t pos = 0;                     // positions in the cache
    int32_t next = 0;                    // the token to feed at pos (decoding)
    int64_t order = 0;                   // admission order: prompts are prefilled in it
    std::vector<TokenLogprob> lp;        // [prompt] with echo and logprobs, chunk by chunk
  };
  // One pass: rows [R] of tokens at positions of slots, and the rows whose logits are read.
  struct Pass {
    std::vector<int32_t> tokens;
    std::vector<int64_t> pos, slot;
    std::vector<char> prompt;   // [R] a prompt token (else a decoding step)
    std::vector<int64_t> want;  // increasing row indices
  };
  void loop();
  void admit();  // waiting sequences into free slots; cancelled ones dropped
  Pass plan();   // every decoding slot's step, then prompt chunks within the budget
  void run(const Pass& p);
  // logits [m, V] of the rows p.want[k0, k0 + m)
  void visit(const Pass& p, int64_t k0, std::span<const float> logits);
  void prompt_done(Slot& sl, std::span<const float> logits);  // the prompt is in the cache
  void record(const Pass& p);
  // the new token from logits [V]: chosen, scored, passed to the sequence; false when it ended
  bool advance(Slot& sl, std::span<const float> logits);
  void release(Slot& sl);
  void fail_slot(Slot& sl, const std::string& why);
  bool cancelled(const Slot& sl) const;
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
  int64_t submitted_ = 0, admitted_ = 0;  // sequences numbered, slots given
  std::vector<EnginePass> trace_;
  bool draining_ = false, stop_ = false;
  std::thread thread_;
};

}  // namespace moelab
