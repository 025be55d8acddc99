#include "serve/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "core/threads.hpp"
#include "kernels/parallel.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// a sequence, seen from both sides

SeqOutput Sequence::wait(size_t tokens, size_t text) {
  std::unique_lock lock(mu_);
  cv_.wait(lock,
           [&] { return out_.done || out_.tokens.size() > tokens || out_.text.size() > text; });
  return out_;
}

SeqOutput Sequence::wait(size_t tokens, size_t text, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout,
               [&] { return out_.done || out_.tokens.size() > tokens || out_.text.size() > text; });
  return out_;
}

bool Sequence::wait_done(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return out_.done; });
}

void Sequence::cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
}

void Sequence::update(const std::function<void(SeqOutput&)>& f) {
  {
    std::lock_guard lock(mu_);
    f(out_);
  }
  cv_.notify_all();
}

// ----------------------------------------------------------------------------
// the engine

Engine::Engine(const Model<float>& model, const Tokenizer& tok, EngineOptions o)
    : model_(model),
      tok_(tok),
      o_(o),
      dec_(model, o.slots, o.max_len > 0 ? o.max_len : model.cfg.max_position_embeddings),
      slots_(size_t(o.slots)) {
  check(o.queue >= 0, "engine: the queue length must be >= 0");
  stats_.slots = o.slots, stats_.max_len = dec_.max_len(), stats_.queue = o.queue;
  stats_.cache_bytes = dec_.cache_bytes();
  // OpenMP's thread count belongs to the thread that sets it: the engine's takes its creator's
  thread_ = std::thread([this, threads = threads_get()] {
    threads_set(threads);
    loop();
  });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool Engine::submit(const std::vector<std::shared_ptr<Sequence>>& seqs) {
  {
    std::lock_guard lock(mu_);
    if (draining_ ||
        int64_t(waiting_.size() + seqs.size()) > o_.queue + stats_.slots - stats_.running)
      return false;
    for (const auto& s : seqs) waiting_.push_back(s);
    stats_.waiting = int64_t(waiting_.size());
  }
  cv_.notify_all();
  return true;
}

void Engine::drain() {
  std::deque<std::shared_ptr<Sequence>> refused;
  {
    std::lock_guard lock(mu_);
    draining_ = true;
    refused.swap(waiting_);
    stats_.waiting = 0;
  }
  for (auto& s : refused)
    s->update([](SeqOutput& out) { out.error = "the server is shutting down", out.done = true; });
  cv_.notify_all();
}

bool Engine::idle() const {
  std::lock_guard lock(mu_);
  return waiting_.empty() && stats_.running == 0;
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

// One thread does all model work: it admits waiting sequences into free slots, then runs one
// step of the whole batch, until stopped.
void Engine::loop() {
  for (;;) {
    std::vector<int64_t> admitted;                   // slots given to waiting sequences
    std::vector<std::shared_ptr<Sequence>> dropped;  // cancelled while they waited
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || stats_.running > 0; });
      if (stop_) return;
      // a sequence whose client went away while it waited never takes a slot (nor a prefill)
      std::erase_if(waiting_, [&](const std::shared_ptr<Sequence>& s) {
        std::lock_guard seq_lock(s->mu_);
        if (s->cancelled_) dropped.push_back(s);
        return s->cancelled_;
      });
      for (int64_t b = 0; b < int64_t(slots_.size()) && !waiting_.empty(); b++)
        if (!slots_[size_t(b)].seq) {
          admitted.push_back(b);
          slots_[size_t(b)].seq = std::move(waiting_.front());
          waiting_.pop_front();
          stats_.running++;
        }
      stats_.waiting = int64_t(waiting_.size());
    }
    for (auto& s : dropped)
      s->update([](SeqOutput& out) {
        out.error = "cancelled", out.finish_reason = "cancelled", out.done = true;
      });
    // A failure inside the model ends the sequences it touched with its message; the server
    // goes on with the others.
    for (const auto& group : prefill_groups(admitted)) try {
        admit(group);
      } catch (const std::exception& e) {
        for (int64_t b : group)
          if (slots_[size_t(b)].seq) fail_slot(slots_[size_t(b)], e.what());
      }
    try {
      step();
    } catch (const std::exception& e) {
      for (auto& sl : slots_)
        if (sl.seq) fail_slot(sl, e.what());
    }
  }
}

void Engine::fail_slot(Slot& sl, const std::string& why) {
  const std::shared_ptr<Sequence> seq = std::move(sl.seq);
  sl.cont.reset();
  {
    std::lock_guard lock(mu_);
    stats_.running--;
  }
  seq->update([&](SeqOutput& out) { out.error = why, out.done = true; });
}

// log-softmax over the whole vocabulary (float exponentials summed in double, as evaluation
// sums them) and the `top` most probable ids among those the tokenizer decodes. The token's
// value and the top values come from one formula, so that equal logits give equal numbers (a
// client's is_greedy compares them exactly).
TokenLogprob Engine::score(std::span<const float> z, int32_t id, int64_t top) const {
  const int64_t V = int64_t(z.size()), Vd = std::min(V, tok_.vocab_size());
  const float* zp = z.data();
  float mx = 0;
  double sum = 0;
  dec_.device().ops<float>().logsumexp(&mx, &sum, zp, 1, V, true);
  const double lse = double(mx) + std::log(sum);
  TokenLogprob t;
  t.id = id, t.logprob = double(zp[id]) - lse;
  const int64_t n = std::min(top, Vd);
  if (n <= 0) return t;
  // one pass keeping the n best, most probable first (ties: the lower id)
  std::vector<int32_t> best;
  best.reserve(size_t(n + 1));
  for (int32_t v = 0; v < int32_t(Vd); v++) {
    if (int64_t(best.size()) == n && zp[v] <= zp[best.back()]) continue;
    auto at = std::upper_bound(best.begin(), best.end(), v,
                               [&](int32_t a, int32_t b) { return zp[a] > zp[b]; });
    best.insert(at, v);
    if (int64_t(best.size()) > n) best.pop_back();
  }
  for (int32_t v : best) t.top.emplace_back(v, double(zp[v]) - lse);
  return t;
}

// Prefill: the prompt into the slot's cache; with echo and logprobs each prompt token is scored
// from the logits before it; the last position gives the first new token. Sequences admitted
// together are prefilled in one pass where they fit (padded to the longest; a padded position
// is overwritten by the sequence's next token before a step reads it), one by one otherwise.
void Engine::admit(std::span<const int64_t> group) {
  const int64_t A = int64_t(group.size()), V = model_.cfg.vocab_size;
  std::vector<std::vector<TokenLogprob>> lp(static_cast<size_t>(A));  // [A][n] with echo
  std::vector<std::vector<float>> last(
      static_cast<size_t>(A));  // [A][V] the logits after each prompt
  std::vector<int64_t> from(static_cast<size_t>(A)), to(static_cast<size_t>(A));
  int64_t n = 0;
  for (int64_t i = 0; i < A; i++) {
    const SeqSpec& sp = slots_[size_t(group[size_t(i)])].seq->spec;
    const int64_t len = int64_t(sp.prompt.size());
    const bool score_prompt = sp.echo && sp.logprobs >= 0;
    from[size_t(i)] = score_prompt ? 0 : len - 1, to[size_t(i)] = len, n = std::max(n, len);
    if (score_prompt) lp[size_t(i)].resize(size_t(len), TokenLogprob{sp.prompt[0], 0, false, {}});
  }
  // logits [rows, V] of positions t0.. of sequence i
  auto visit = [&](int64_t i, int64_t t0, std::span<const float> logits) {
    const SeqSpec& sp = slots_[size_t(group[size_t(i)])].seq->spec;
    const int64_t rows = int64_t(logits.size()) / V, len = to[size_t(i)];
    if (t0 + rows == len) last[size_t(i)].assign(logits.end() - V, logits.end());
    const int64_t scored = std::min(rows, len - 1 - t0);  // rows before the last position
    parallel_for(scored, 8, A == 1 && scored >= 16, [&](int64_t r) {
      lp[size_t(i)][size_t(t0 + r + 1)] = score(logits.subspan(size_t(r * V), size_t(V)),
                                                sp.prompt[size_t(t0 + r + 1)], sp.logprobs);
    });
  };
  if (A == 1) {
    dec_.prefill_slot(group[0], slots_[size_t(group[0])].seq->spec.prompt, from[0],
                      [&](int64_t t0, std::span<const float> z) { visit(0, t0, z); });
  } else {
    std::vector<int32_t> tokens(static_cast<size_t>(A * n));  // [A, n] padded with each last id
    for (int64_t i = 0; i < A; i++) {
      const auto& p = slots_[size_t(group[size_t(i)])].seq->spec.prompt;
      std::copy(p.begin(), p.end(), tokens.begin() + i * n);
      std::fill(tokens.begin() + i * n + int64_t(p.size()), tokens.begin() + (i + 1) * n, p.back());
    }
    dec_.prefill_each(
        tokens, n, from, to,
        [&](int64_t i, std::span<const float> z) { visit(i, from[size_t(i)], z); }, group);
  }
  for (int64_t i = 0; i < A; i++) {
    Slot& sl = slots_[size_t(group[size_t(i)])];
    sl.cont = std::make_unique<Continuation>(tok_, sl.seq->spec.prompt, sl.seq->spec.gen);
    sl.pos = to[size_t(i)];
    {
      std::lock_guard lock(mu_);
      stats_.prompt_tokens += sl.pos;
    }
    sl.seq->update([&](SeqOutput& out) { out.prompt = std::move(lp[size_t(i)]); });
    if (sl.cont->done() || !advance(sl, last[size_t(i)])) release(sl);
  }
}

// Groups of the sequences just admitted, by length, that one prefill pass takes: at most
// kPrefillRows padded positions, and padding at most a third of them.
std::vector<std::vector<int64_t>> Engine::prefill_groups(std::vector<int64_t> adm) const {
  constexpr int64_t kPrefillRows = 4096;
  auto len = [&](int64_t b) { return int64_t(slots_[size_t(b)].seq->spec.prompt.size()); };
  std::sort(adm.begin(), adm.end(), [&](int64_t a, int64_t b) { return len(a) > len(b); });
  std::vector<std::vector<int64_t>> groups;
  int64_t real = 0;
  for (int64_t b : adm) {
    if (!groups.empty()) {
      const auto& g = groups.back();
      const int64_t rows = int64_t(g.size() + 1) * len(g[0]);  // the first is the longest
      if (rows <= kPrefillRows && 3 * (real + len(b)) >= 2 * rows) {
        groups.back().push_back(b), real += len(b);
        continue;
      }
    }
    groups.push_back({b}), real = len(b);
  }
  return groups;
}

bool Engine::advance(Slot& sl, std::span<const float> logits) {
  bool cancelled;
  {
    std::lock_guard lock(sl.seq->mu_);
    cancelled = sl.seq->cancelled_;
  }
  if (cancelled) return false;
  auto [id, piece] = sl.cont->push(logits);
  const bool eot = sl.cont->done() && sl.cont->result().reason == FinishReason::Eot;
  const SeqSpec& sp = sl.seq->spec;
  if (eot && sp.rank) {
    // the end token is not returned, but choosing it is part of the candidate's probability: a
    // candidate that stops must not get its last choice free
    const double lp = score(logits, id, 0).logprob;
    sl.seq->update([&](SeqOutput& out) { out.score += lp; });
  }
  if (!eot) {
    TokenLogprob t = sp.logprobs >= 0 || sp.rank
                         ? score(logits, id, std::max<int64_t>(sp.logprobs, 0))
                         : TokenLogprob{id};
    sl.seq->update([&](SeqOutput& out) {
      out.score += t.logprob;
      out.tokens.push_back(std::move(t));
      out.text += piece;
    });
    std::lock_guard lock(mu_);
    stats_.new_tokens++;
  }
  sl.next = id;
  // the token would be fed at sl.pos: the cache must have room for it
  if (!sl.cont->done() && sl.pos >= dec_.max_len()) sl.cont->end(FinishReason::Length);
  return !sl.cont->done();
}

void Engine::release(Slot& sl) {
  const std::string rest = sl.cont->finish();
  const FinishReason r = sl.cont->result().reason;
  const std::shared_ptr<Sequence> seq = std::move(sl.seq);
  sl.cont.reset();
  {  // the slot is free before its client hears of the end: it may come back at once
    std::lock_guard lock(mu_);
    stats_.running--, stats_.sequences++;
  }
  seq->update([&](SeqOutput& out) {
    out.text += rest;
    out.finish_reason = r == FinishReason::Length ? "length" : "stop";
    if (seq->cancelled_) out.error = "cancelled", out.finish_reason = "cancelled";
    out.done = true;
  });
}

// One token for every running sequence, each at its own position in its own slot.
void Engine::step() {
  std::vector<int32_t> tokens;
  std::vector<int64_t> pos, slot;
  for (int64_t b = 0; b < int64_t(slots_.size()); b++) {
    const Slot& sl = slots_[size_t(b)];
    if (!sl.seq || !sl.cont) continue;
    tokens.push_back(sl.next), pos.push_back(sl.pos), slot.push_back(b);
  }
  if (tokens.empty()) return;
  const auto logits = dec_.step_slots(tokens, pos, slot);
  const size_t V = size_t(model_.cfg.vocab_size);
  for (size_t i = 0; i < slot.size(); i++) {
    Slot& sl = slots_[size_t(slot[i])];
    sl.pos++;
    if (!advance(sl, logits.subspan(i * V, V))) release(sl);
  }
  std::lock_guard lock(mu_);
  stats_.steps++;
}

}  // namespace moelab
