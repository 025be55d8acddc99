#pragma once
// The trainer: phases over data subsets with one optimizer and one schedule across them,
// gradient accumulation, clipping, periodic validation, metrics.jsonl, checkpoints at phase
// ends and every N steps, exact resume, and a checkpoint on SIGINT/SIGTERM.
//
// A Trainer holds the model and the optimizer; step() is one optimizer step on micro-batches
// from any source (a run's data loaders, or the synthetic tokens of `moelab bench train`).
// train_run() is the loop over a run: step, evaluate, log, save. What a study adds to a run
// (the forgetting evaluation, focused replay) comes in through hooks (train/hook.hpp).
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
#include "train/hook.hpp"
#include "train/step_stats.hpp"

namespace moelab {

// What evaluate() measured after a step; null or empty where nothing was due.
struct StepEval {
  nlohmann::ordered_json hooks = nlohmann::ordered_json::object();  // the hooks' metrics fields
  nlohmann::ordered_json val_loss;  // mean validation loss per subset
};

// How a Trainer runs, beyond its experiment.
struct TrainerOptions {
  TrainerHooks hooks;  // called in this order
  // Data parallel: each layer's gradient sum starts as soon as the backward pass has finished
  // it; false starts them all after the backward pass (to measure what the overlap buys).
  bool overlap_grad_sums = true;
};

class Trainer {
 public:
  // The model of x at batch_size x seq_len with weights from run.seed, [train] freeze applied,
  // and the optimizer (moments for the trainable tensors only). Touches no data and no run
  // directory: enough for step() on any micro-batches.
  explicit Trainer(const Experiment& x, TrainerOptions options = {});
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
  // The run's next step: the micro-batches of its phase (with replay), the schedule's rate,
  // then the hooks' after_step.
  StepStats step();
  // An optimizer update on micro-batches from `next` that is not a step of the run (a hook's
  // extra update): step(next, lr) without counting it.
  StepStats update(const BatchSource& next, double lr);

  // Whether to stop and to save now: this process's requests, agreed with every rank of a
  // data-parallel run (any rank's request counts for all).
  std::pair<bool, bool> agree(bool stop, bool save) const;

  // The evaluations due after step r: the hooks' on_evaluate and metrics fields, and the
  // validation losses of every subset on the steps that log them.
  StepEval evaluate(const StepStats& r);
  // The step's line of metrics.jsonl (when due) and the progress line on stderr.
  void log(const StepStats& r, const StepEval& e);
  // A checkpoint of the current step (never of non-finite weights: that stops the run).
  void save();
  // The hooks' on_step_end: after the step's line and its checkpoint.
  void step_end(const StepStats& r);

  bool checkpoint_due(const StepStats& r) const;  // at a phase end or every checkpoint.every
  bool finished() const { return step_ >= x_.total_steps(); }
  bool unsaved() const { return saved_step_ != step_ && step_ > start_step_; }
  int64_t steps_done() const { return step_; }
  void progress_end() const;  // ends the progress line on a terminal

  // What hooks use of a run (after start's data is open).
  const Experiment& experiment() const { return x_; }
  const Model<float>& model() const { return model_; }
  const DataDir& data() const { return *data_; }
  std::map<std::string, DataLoader>& loaders() { return train_; }  // training, by subset
  int processes() const { return comm_ ? comm_->size() : 1; }      // of a data-parallel run
  bool phase_ends_at(int64_t step) const;  // whether the step (a count, 1 = the first) ends one
  // Appends a line to metrics.jsonl (on the rank that writes the run's files).
  void metrics_write(const nlohmann::ordered_json& line);

 private:
  void resume_from(const std::string& ckpt);
  StepStats train_batch(const BatchSource& next, double lr, bool counted);
  void data_parallel_setup();
  void reduce_step(StepStats& r);
  void on_nonfinite(const StepStats& r);
  bool log_due(const StepStats& r, const StepEval& e) const;
  nlohmann::ordered_json validation_losses();
  void log_progress(nlohmann::ordered_json& m, const StepStats& r);

  const Experiment x_;
  TrainerOptions options_;
  Model<float> model_;
  AdamW<float> opt_;
  FlopCounts flops_;
  // a run's (start)
  std::optional<DataDir> data_;
  std::map<std::string, DataLoader> train_, val_;
  std::string metrics_path_;
  std::ofstream metrics_;
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

// The run of experiment x, with the hooks it asks for (trainer_hooks_from_experiment) and
// MOELAB_DIST_OVERLAP=0 turning off TrainerOptions::overlap_grad_sums.
// Returns 0 when the run completed, 130 when it was interrupted (after saving a checkpoint).
// Errors (a non-finite loss, a full disk, a checkpoint of another config, an evaluation set of
// which too little was recalled) throw TrainStopped with one line. `extra` hooks (a study's
// measurements) come after the experiment's own.
int train_run(const Experiment& x, bool resume, TrainerHooks extra = {});

}  // namespace moelab
