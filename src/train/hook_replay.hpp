#pragma once
// Focused replay (docs/methods.md §5.4) as a trainer hook: every phase with replay = "focused"
// keeps a memory of sequences (train/replay.hpp): those the run trained on up to the phase's end,
// or those of its replay_subset. After every replay_every steps of the phase a batch of distinct
// samples drawn from the memory is trained replay_repeat times, at the step's learning rate; the
// metrics line shows the losses and the memory's size, and the checkpoint keeps the memories.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/experiment.hpp"
#include "train/hook.hpp"
#include "train/replay.hpp"

namespace moelab {

class ReplayHook : public TrainerHook {
 public:
  explicit ReplayHook(const Experiment& x);

  void on_open(Trainer& t) override;
  void restore_state(Trainer& t, const nlohmann::json& state, const std::string& ckpt) override;
  void after_step(Trainer& t, const StepStats& r) override;
  void metrics(const StepStats& r, nlohmann::ordered_json& fields) const override;
  void save_state(nlohmann::json& state) const override;

 private:
  struct PhaseReplay {
    size_t phase;
    ReplayMemory memory;
  };
  void offer(size_t phase, const std::string& subset, std::span<const uint64_t> ids);
  void replay(Trainer& t, size_t phase, double lr);
  uint32_t source_of(const std::string& subset) const;

  const Experiment x_;
  std::vector<PhaseReplay> memories_;  // one per focused phase
  std::vector<std::string> sources_;   // names the memories' sources: the training subsets
  std::vector<uint64_t> ids_;
  std::vector<int32_t> tok_, tgt_;  // the replay batch [batch_size * grad_accum * seq_len]
  // the last step's replay: a replay was due; each update's loss (replay_repeat of them); the
  // memory's size after the draw
  bool replayed_ = false;
  std::vector<double> losses_;
  uint64_t memory_size_ = 0;
};

}  // namespace moelab
