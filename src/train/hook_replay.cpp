#include "train/hook_replay.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/trainer.hpp"

namespace moelab {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

ReplayHook::ReplayHook(const Experiment& x) : x_(x) {}

void ReplayHook::on_open(Trainer& t) {
  for (size_t i = 0; i < x_.phases.size(); i++) {
    if (t.processes() > 1 && x_.phases[i].focused()) {
      fail(fmt::format("{}: 'phases[{}]': focused replay runs in one process only (not {})",
                       x_.source, i, t.processes()));
    }
  }
  for (const auto& [name, _] : t.loaders()) {
    sources_.push_back(name);
  }
  const int64_t batch = x_.batch_size * x_.grad_accum;
  for (size_t i = 0; i < x_.phases.size(); i++) {
    const PhaseConfig& p = x_.phases[i];
    if (!p.focused()) {
      continue;
    }
    // Memory of another subset: it must hold one batch of distinct sequences.
    if (!p.replay_subset.empty() && t.loaders().at(p.replay_subset).sequences() < uint64_t(batch)) {
      fail(fmt::format(
          "{}: 'phases[{}].replay_subset' {} has {} training sequences, fewer than one replay "
          "batch ({} = train.batch_size x train.grad_accum)",
          x_.source, i, p.replay_subset, t.loaders().at(p.replay_subset).sequences(), batch));
    }
    memories_.push_back({i, ReplayMemory(uint64_t(p.replay_memory), uint32_t(p.replay_exit),
                                         rng_mix(x_.seed ^ fnv1a("replay:" + p.name)))});
  }
}

void ReplayHook::restore_state(Trainer&, const json& state, const std::string& ckpt) {
  for (PhaseReplay& pr : memories_) {
    const std::string& name = x_.phases[pr.phase].name;
    const std::string where =
        fmt::format("{}/trainer_state.json: the replay memory of phase {}", ckpt, name);
    if (!state.contains("replay") || !state["replay"].is_object() ||
        !state["replay"].contains(name)) {
      fail(fmt::format("{} is missing (was the run started without replay = \"focused\" there?)",
                       where));
    }
    pr.memory.from_json(state["replay"][name], sources_, where);
  }
}

void ReplayHook::save_state(json& state) const {
  if (memories_.empty()) {
    return;
  }
  json out = json::object();
  for (const PhaseReplay& pr : memories_) {
    out[x_.phases[pr.phase].name] = pr.memory.to_json(sources_);
  }
  state["replay"] = out;
}

// The step's sequences go into the memories, then a replay when one is due: after every
// replay_every steps of a focused phase, at the step's learning rate.
void ReplayHook::after_step(Trainer& t, const StepStats& r) {
  replayed_ = false;
  losses_.clear();
  memory_size_ = 0;
  for (const TrainedBatch& b : r.trained) {
    offer(r.phase, b.subset, b.sequences);
  }
  const PhaseConfig& phase = x_.phases[r.phase];
  if (!phase.focused()) {
    return;
  }
  int64_t phase_start = 0;
  for (size_t i = 0; i < r.phase; i++) {
    phase_start += x_.phase_steps(x_.phases[i]);
  }
  if ((r.step - phase_start) % phase.replay_every == 0) {
    replay(t, r.phase, r.lr);
  }
}

void ReplayHook::metrics(const StepStats&, ojson& fields) const {
  if (replayed_) {
    fields["replay"] = {{"loss", losses_}, {"memory", memory_size_}};
  }
}

uint32_t ReplayHook::source_of(const std::string& subset) const {
  return uint32_t(std::find(sources_.begin(), sources_.end(), subset) - sources_.begin());
}

// The sequences of a regular micro-batch of phase `phase`: every memory that keeps what the run
// trained on takes them, up to the end of its own phase.
void ReplayHook::offer(size_t phase, const std::string& subset, std::span<const uint64_t> ids) {
  const uint32_t source = source_of(subset);
  for (PhaseReplay& pr : memories_) {
    if (x_.phases[pr.phase].replay_subset.empty() && phase <= pr.phase) {
      for (uint64_t id : ids) {
        pr.memory.offer(source, id);
      }
    }
  }
}

// One replay: a batch of distinct samples drawn from the phase's memory (refilled first from
// replay_subset when it names one), trained replay_repeat times.
void ReplayHook::replay(Trainer& t, size_t phase, double lr) {
  const PhaseConfig& p = x_.phases[phase];
  ReplayMemory& mem = std::find_if(memories_.begin(), memories_.end(), [&](auto& pr) {
                        return pr.phase == phase;
                      })->memory;
  const uint64_t n = uint64_t(x_.batch_size * x_.grad_accum);
  if (!p.replay_subset.empty()) {
    DataLoader& from = t.loaders().at(p.replay_subset);
    const uint32_t source = source_of(p.replay_subset);
    // Up to capacity, or every sequence of the subset: one pass over its order finds them all.
    const uint64_t room = std::min(mem.capacity(), from.sequences());
    for (uint64_t tries = 0; mem.size() < room && tries < from.sequences(); tries++) {
      ids_.clear();
      from.skip(1, ids_);
      mem.offer(source, ids_[0]);
    }
  }
  replayed_ = true;
  if (mem.size() >= n) {
    const std::vector<ReplaySample> batch = mem.draw(n);
    const size_t len = size_t(x_.seq_len);
    tok_.resize(n * len);
    tgt_.resize(n * len);
    for (size_t i = 0; i < batch.size(); i++) {
      t.loaders()
          .at(sources_[batch[i].source])
          .read_sequence(batch[i].sequence, &tok_[i * len], &tgt_[i * len]);
    }
    const size_t micro_len = size_t(x_.batch_size) * len;
    const BatchSource next = [&](int64_t micro) {
      const size_t at = size_t(micro) * micro_len;
      return MicroBatch{std::span<const int32_t>(tok_).subspan(at, micro_len),
                        std::span<const int32_t>(tgt_).subspan(at, micro_len)};
    };
    for (int64_t k = 0; k < p.replay_repeat; k++) {
      losses_.push_back(t.update(next, lr).lm);
    }
  }
  memory_size_ = mem.size();
}

}  // namespace moelab
