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

SeqOutput Sequence::take() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return out_.done; });
  return std::move(out_);
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
  check(o.prefill_chunk >= 1, "engine: the prefill chunk must be at least 1 token");
  stats_.prefill_chunk = o.prefill_chunk;
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
    for (const auto& s : seqs) {
      s->number_ = submitted_++;
      waiting_.push_back(s);
    }
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
// pass of the model (a step of every decoding sequence and prompt chunks), until stopped.
void Engine::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || stats_.running > 0; });
      if (stop_) {
        return;
      }
    }
    admit();
    const Pass p = plan();
    if (p.tokens.empty()) {
      continue;
    }
    // A failure inside the model ends the sequences of the pass with its message; the server
    // goes on with the others.
    try {
      run(p);
    } catch (const std::exception& e) {
      for (int64_t b : p.slot) {
        if (slots_[size_t(b)].seq) {
          fail_slot(slots_[size_t(b)], e.what());
        }
      }
    }
  }
}

void Engine::admit() {
  std::vector<std::shared_ptr<Sequence>> dropped;  // cancelled while they waited
  {
    std::lock_guard lock(mu_);
    // a sequence whose client went away while it waited never takes a slot (nor a prefill)
    std::erase_if(waiting_, [&](const std::shared_ptr<Sequence>& s) {
      std::lock_guard seq_lock(s->mu_);
      if (s->cancelled_) {
        dropped.push_back(s);
      }
      return s->cancelled_;
    });
    for (size_t b = 0; b < slots_.size() && !waiting_.empty(); b++) {
      Slot& sl = slots_[b];
      if (sl.seq) {
        continue;
      }
      sl.seq = std::move(waiting_.front());
      waiting_.pop_front();
      sl.pos = 0, sl.order = admitted_++;
      const SeqSpec& sp = sl.seq->spec;
      sl.lp.clear();
      if (sp.echo && sp.logprobs >= 0) {
        sl.lp.resize(sp.prompt.size(), TokenLogprob{sp.prompt[0], 0, false, {}});
      }
      stats_.running++;
    }
    stats_.waiting = int64_t(waiting_.size());
  }
  for (auto& s : dropped) {
    s->update([](SeqOutput& out) {
      out.error = "cancelled", out.finish_reason = "cancelled", out.done = true;
    });
  }
}

bool Engine::cancelled(const Slot& sl) const {
  std::lock_guard lock(sl.seq->mu_);
  return sl.seq->cancelled_;
}

// Every decoding slot's next token first, then prompt tokens in admission order until the
// chunk's budget is spent: the oldest prompt goes on where its last chunk ended, and prompts
// that fit whole share a pass. The logits read: every decoding row, every prompt row with echo
// and logprobs (row t scores token t + 1), and each prompt's last row (its first new token).
Engine::Pass Engine::plan() {
  Pass p;
  std::vector<int64_t> filling;  // slots whose prompt is not yet all in the cache
  for (int64_t b = 0; b < int64_t(slots_.size()); b++) {
    Slot& sl = slots_[size_t(b)];
    if (!sl.seq) {
      continue;
    }
    if (sl.cont) {
      p.want.push_back(int64_t(p.tokens.size()));
      p.tokens.push_back(sl.next), p.pos.push_back(sl.pos), p.slot.push_back(b);
      p.prompt.push_back(0);
    } else if (cancelled(sl)) {
      fail_slot(sl, "cancelled");
    } else {
      filling.push_back(b);
    }
  }
  std::sort(filling.begin(), filling.end(), [&](int64_t a, int64_t b) {
    return slots_[size_t(a)].order < slots_[size_t(b)].order;
  });
  int64_t budget = o_.prefill_chunk;
  for (int64_t b : filling) {
    if (budget == 0) {
      break;
    }
    const Slot& sl = slots_[size_t(b)];
    const std::vector<int32_t>& prompt = sl.seq->spec.prompt;
    const int64_t len = int64_t(prompt.size()), k = std::min(budget, len - sl.pos);
    const bool all = !sl.lp.empty();
    for (int64_t t = sl.pos; t < sl.pos + k; t++) {
      if (all || t == len - 1) {
        p.want.push_back(int64_t(p.tokens.size()));
      }
      p.tokens.push_back(prompt[size_t(t)]), p.pos.push_back(t), p.slot.push_back(b);
      p.prompt.push_back(1);
    }
    budget -= k;
  }
  return p;
}

void Engine::run(const Pass& p) {
  if (o_.trace) {
    record(p);
  }
  dec_.forward_rows(p.tokens, p.pos, p.slot, p.want,
                    [&](int64_t k0, std::span<const float> z) { visit(p, k0, z); });
  // the prompt rows are in the cache (a prompt's last row has already made it a decoding one)
  for (size_t i = 0; i < p.tokens.size(); i++) {
    Slot& sl = slots_[size_t(p.slot[i])];
    if (p.prompt[i] && sl.seq && !sl.cont) {
      sl.pos = p.pos[i] + 1;
    }
  }
  std::lock_guard lock(mu_);
  stats_.steps++;
  if (std::find(p.prompt.begin(), p.prompt.end(), 1) != p.prompt.end()) {
    stats_.prefill_passes++;
  }
}

void Engine::visit(const Pass& p, int64_t k0, std::span<const float> z) {
  const int64_t m = int64_t(z.size()) / model_.cfg.vocab_size;
  const size_t V = size_t(model_.cfg.vocab_size);
  auto logits = [&](int64_t k) { return z.subspan(size_t(k - k0) * V, V); };
  // the prompts' log-probabilities first, on all threads: row t scores token t + 1
  std::vector<int64_t> scored;  // [<= m] indices into p.want
  for (int64_t k = k0; k < k0 + m; k++) {
    const size_t i = size_t(p.want[size_t(k)]);
    const Slot& sl = slots_[size_t(p.slot[i])];
    if (p.prompt[i] && p.pos[i] + 1 < int64_t(sl.seq->spec.prompt.size())) {
      scored.push_back(k);
    }
  }
  parallel_for(int64_t(scored.size()), 8, scored.size() >= 16, [&](int64_t j) {
    const int64_t k = scored[size_t(j)];
    const size_t i = size_t(p.want[size_t(k)]);
    Slot& sl = slots_[size_t(p.slot[i])];
    const SeqSpec& sp = sl.seq->spec;
    const size_t t = size_t(p.pos[i] + 1);
    sl.lp[t] = score(logits(k), sp.prompt[t], sp.logprobs);
  });
  // then the new tokens, in row order: a decoding step's, or a prompt's first
  for (int64_t k = k0; k < k0 + m; k++) {
    const size_t i = size_t(p.want[size_t(k)]);
    Slot& sl = slots_[size_t(p.slot[i])];
    if (!sl.seq) {
      continue;
    }
    if (!p.prompt[i]) {
      sl.pos++;
      if (!advance(sl, logits(k))) {
        release(sl);
      }
    } else if (p.pos[i] + 1 == int64_t(sl.seq->spec.prompt.size())) {
      prompt_done(sl, logits(k));
    }
  }
}

void Engine::prompt_done(Slot& sl, std::span<const float> logits) {
  sl.cont = std::make_unique<Continuation>(tok_, sl.seq->spec.prompt, sl.seq->spec.gen);
  sl.pos = int64_t(sl.seq->spec.prompt.size());
  {
    std::lock_guard lock(mu_);
    stats_.prompt_tokens += sl.pos;
  }
  sl.seq->update([&](SeqOutput& out) { out.prompt = std::move(sl.lp); });
  sl.lp.clear();
  if (sl.cont->done() || !advance(sl, logits)) {
    release(sl);
  }
}

void Engine::record(const Pass& p) {
  EnginePass rec;
  for (size_t i = 0; i < p.tokens.size(); i++) {
    const int64_t seq = slots_[size_t(p.slot[i])].seq->number();
    if (p.prompt[i] && !rec.empty() && rec.back().prompt && rec.back().seq == seq) {
      rec.back().count++;
      continue;
    }
    rec.push_back({seq, p.pos[i], 1, p.prompt[i] != 0});
  }
  std::lock_guard lock(mu_);
  trace_.push_back(std::move(rec));
}

std::vector<EnginePass> Engine::trace() const {
  std::lock_guard lock(mu_);
  return trace_;
}

void Engine::fail_slot(Slot& sl, const std::string& why) {
  const std::shared_ptr<Sequence> seq = std::move(sl.seq);
  sl.cont.reset();
  sl.lp.clear();
  {
    std::lock_guard lock(mu_);
    stats_.running--;
  }
  seq->update([&](SeqOutput& out) {
    out.error = why, out.done = true;
    if (why == "cancelled") {
      out.finish_reason = "cancelled";
    }
  });
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
  if (n <= 0) {
    return t;
  }
  if (n == 1) {  // what the harness asks for: one vectorised pass (ties: the lower id)
    int32_t best = 0;
    dec_.device().ops<float>().argmax(&best, zp, 1, Vd, V);
    t.top.emplace_back(best, double(zp[best]) - lse);
    return t;
  }
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

}  // namespace moelab
