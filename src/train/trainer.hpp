#pragma once
// The trainer: phases over data subsets with one optimizer and one schedule across them,
// gradient accumulation, clipping, periodic validation, metrics.jsonl, checkpoints at phase
// ends and every N steps, exact resume, and a checkpoint on SIGINT/SIGTERM.
//
// A Trainer holds the model and the optimizer; step() is one optimizer step on micro-batches
// from any source (a run's data loaders, or the synthetic tokens of `moelab bench train`).
// train_run() is the loop over a run: step, evaluate, log, save.
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "model/model.hpp"
#include "train/adamw.hpp"
#include "train/collective.hpp"
#include "train/data_parallel.hpp"
#include "train/experiment.hpp"
#include "train/replay.hpp"

namespace moelab {

// One micro-batch: tokens and next-token targets, [batch_size * seq_len] each. The spans stay
// valid until the source is called again.
struct MicroBatch {
  std::span<const int32_t> tokens, targets;
};
// Supplies micro-batch `micro` (0 .. grad_accum - 1) of the step being taken.
using BatchSource = std::function<MicroBatch(int64_t micro)>;

// One routed layer's router in one optimizer step.
struct RouterStats {
  int64_t layer = 0;
  double aux = 0, z = 0;  // E sum_e f_e P_e and mean logsumexp^2, without the coefficients; means
                          // over the micro-batches
  double max_load = 0;    // the largest expert's share of the step's assignments, times E
};

// What one optimizer step did.
struct StepStats {
  int64_t step = 0;               // the steps taken after it (1 for the first)
  size_t phase = 0;               // index into the experiment's phases (run steps)
  double lr = 0;                  // the learning rate it used
  double lm = 0, aux = 0, z = 0;  // losses, means over the micro-batches
  double grad_norm = 0;           // of the mean gradient, before clipping
  bool applied = false;           // false: skipped, the loss or gradient was not finite
  std::vector<std::vector<double>> expert_load;  // MoE: of the last micro-batch (Model's form)
  std::vector<RouterStats> router;               // MoE: per routed layer, of the whole step
  // Focused replay after this step (methods.md §5.4): the loss of each update on the replay
  // batch (f of them), the memory's size after the draw. replayed: a replay was due.
  bool replayed = false;
  std::vector<double> replay_lm;
  uint64_t replay_memory = 0;
  double total() const { return lm + aux + z; }
};

// What evaluate() measured after a step; null where nothing was due.
struct StepEval {
  nlohmann::ordered_json forgetting;  // the evaluation set's filtering and forgetting metrics
  nlohmann::ordered_json val_loss;    // mean validation loss per subset
};

class Trainer {
 public:
  // The model of x at batch_size x seq_len with weights from run.seed, [train] freeze applied,
  // and the optimizer (moments for the trainable tensors only). Touches no data and no run
  // directory: enough for step() on any micro-batches.
  explicit Trainer(const Experiment& x);
  virtual ~Trainer() = default;
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // A run: opens the data and claims the run directory. A fresh start loads [model] init_from;
  // with resume, the run's last checkpoint (weights, optimizer, data positions). Everything read
  // is checked before the run directory is touched.
  void start(bool resume);

  // One optimizer step at learning rate lr: grad_accum micro-batches of forward and backward
  // (gradients summed; in a data-parallel run each rank its share, then the sums over the
  // ranks, reduce_step), then the AdamW update of the mean gradient with global
  // norm clipping. A non-finite loss or gradient is never applied: the step is skipped
  // (train.skip_nonfinite, at most train.max_skips in a row) or training stops with one line.
  StepStats step(const BatchSource& next, double lr);
  // The run's next step: the micro-batches of its phase (with replay), the schedule's rate.
  StepStats step();

  // Whether to stop and to save now: this process's requests, agreed with every rank of a
  // data-parallel run (any rank's request counts for all).
  std::pair<bool, bool> agree(bool stop, bool save) const;

  // The evaluations due after step r: the forgetting set's filtering and metrics, and the
  // validation losses of every subset on the steps that log them.
  StepEval evaluate(const StepStats& r);
  // The step's line of metrics.jsonl (when due) and the progress line on stderr.
  void log(const StepStats& r, const StepEval& e);
  // A checkpoint of the current step (never of non-finite weights: that stops the run).
  void save();

  // Stops the run (one line, exit 1) when the evaluation set it filtered holds fewer than
  // eval.min_recalled samples: it cannot measure forgetting. Called after the checkpoint of the
  // filtering step, so that the checkpoint is kept.
  void recalled_check() const;

  bool checkpoint_due(const StepStats& r) const;  // at a phase end or every checkpoint.every
  bool finished() const { return step_ >= x_.total_steps(); }
  bool unsaved() const { return saved_step_ != step_ && step_ > start_step_; }
  int64_t steps_done() const { return step_; }
  void progress_end() const;  // ends the progress line on a terminal

  const Model<float>& model() const { return model_; }

 private:
  struct PhaseAt {
    size_t index;
    int64_t end;  // the step count at which it ends
  };
  PhaseAt phase_at(int64_t step) const;
  std::string start_claim(bool resume);
  void resume_from(const std::string& ckpt);
  void init_from();
  void forgetting_setup();
  nlohmann::ordered_json forgetting_filter();
  void forgetting_at_start();
  std::string recalled_shortfall() const;
  EvalSetLimits evalset_limits() const;
  StepStats train_batch(const BatchSource& next, double lr, bool counted);
  void data_parallel_setup();
  void reduce_step(StepStats& r);
  void replay_setup();
  void replay_offer(size_t phase, const std::string& subset, std::span<const uint64_t> ids);
  void replay_run(size_t phase, StepStats& r, double lr);
  nlohmann::json replay_state() const;
  void replay_restore(const nlohmann::json& state, const std::string& ckpt);
  void on_nonfinite(const StepStats& r);
  bool log_due(const StepStats& r, const StepEval& e) const;
  nlohmann::ordered_json forgetting_duties(const PhaseConfig& phase, bool phase_done);
  nlohmann::ordered_json validation_losses();
  void log_progress(nlohmann::ordered_json& m, const StepStats& r);
  std::string last_good() const;

  const Experiment x_;
  Model<float> model_;
  AdamW<float> opt_;
  FlopCounts flops_;
  // a run's (start)
  std::optional<DataDir> data_;
  std::map<std::string, DataLoader> train_, val_;
  std::string metrics_path_, frozen_path_;
  std::ofstream metrics_;
  EvalSet full_set_, frozen_;  // forgetting: the evaluation set, and its part frozen after A
  bool have_frozen_ = false;
  std::string too_few_;  // why the frozen set cannot measure forgetting ("" while it can)
  // focused replay: one memory per phase that uses it; sources_ names the memories' sources
  struct PhaseReplay {
    size_t phase;
    ReplayMemory memory;
  };
  std::vector<PhaseReplay> replay_;
  std::vector<std::string> sources_;
  std::vector<uint64_t> ids_;
  std::vector<int32_t> replay_tok_, replay_tgt_;
  bool tty_;
  double peak_ = 0;
  int64_t step_ = 0, start_step_ = 0, saved_step_ = -1, skipped_in_a_row_ = 0;
  std::string phase_name_;  // of the last step taken
  int64_t window_steps_ = 0;
  double t_start_ = 0, t_window_ = 0;
  std::vector<int32_t> tok_, tgt_;
  // data parallel (null / absent in one process)
  Collective* comm_ = nullptr;
  std::unique_ptr<GradSync> sync_;
  double comm_wait_s_ = 0;  // waiting for gradient sums, since the last progress line
  int64_t comm_steps_ = 0;
};

// What stopped a run with an error: the one line, the steps it had taken (its last good
// checkpoint may be older; -1: it stopped before it started), and whether a non-finite loss or
// gradient stopped it (the run diverged) rather than anything else. A study records it and goes on
// with its other runs.
struct TrainStopped : Error {
  TrainStopped(const std::string& msg, int64_t step, bool nonfinite);
  int64_t step = 0;
  bool nonfinite = false;
};

// Returns 0 when the run completed, 130 when it was interrupted (after saving a checkpoint).
// Errors (a non-finite loss, a full disk, a checkpoint of another config, an evaluation set of
// which too little was recalled) throw TrainStopped with one line.
int train_run(const Experiment& x, bool resume);

}  // namespace moelab
