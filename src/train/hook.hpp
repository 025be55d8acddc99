#pragma once
// What a study adds to a training run without the trainer knowing it: a TrainerHook is called at
// fixed points of the run (its start, after each optimizer step, at each evaluation point, when a
// metrics line or a checkpoint is written, on resume). Every call has a default that does
// nothing, so a hook overrides only what it needs. The trainer calls its hooks in the order it
// was given them; a hook's metrics fields come in that order on the line.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/step_stats.hpp"

namespace moelab {

class Trainer;
struct Experiment;

class TrainerHook {
 public:
  virtual ~TrainerHook() = default;

  // The run's data is open and nothing is written yet (every rank): check and read what the
  // hook needs; a fail() here leaves the run directory untouched.
  virtual void on_open(Trainer&) {}
  // A resumed run: the checkpoint's trainer_state.json (`state`) from folder `ckpt`, after the
  // weights, the optimizer and the data positions (every rank).
  virtual void restore_state(Trainer&, const nlohmann::json& state, const std::string& ckpt) {}
  // Fields of run.json that describe what the hook does, added after "total_steps".
  virtual void run_info(nlohmann::ordered_json& run) const {}
  // The run directory is ready and the run starts at Trainer::steps_done() (0, or the step it
  // resumed at); on the rank that writes the run's files only.
  virtual void on_start(Trainer&) {}
  // After each optimizer step of the run (every rank): the place for more updates
  // (Trainer::update) that belong to the step.
  virtual void after_step(Trainer&, const StepStats& r) {}
  // The evaluation point after step r, before its metrics line; on the writing rank only.
  virtual void on_evaluate(Trainer&, const StepStats& r) {}
  // Fields for step r's metrics line, at its end. A field asks for the line: it is written even
  // on a step whose losses are not logged.
  virtual void metrics(const StepStats& r, nlohmann::ordered_json& fields) const {}
  // After step r's line and its checkpoint (when one was due): a fail() here stops the run with
  // that checkpoint kept.
  virtual void on_step_end(Trainer&, const StepStats& r) {}
  // What the hook keeps in the checkpoint's trainer_state.json (restore_state reads it back).
  virtual void save_state(nlohmann::json& state) const {}
};

using TrainerHooks = std::vector<std::unique_ptr<TrainerHook>>;

// The hooks experiment x asks for, in the order their metrics fields appear: focused replay
// (a phase with replay = "focused"), then the forgetting evaluation ([eval]; it also records
// the evaluation settings in run.json when there is no evaluation set), then the run's live
// page (train/run_page.hpp; no metrics fields).
TrainerHooks trainer_hooks_from_experiment(const Experiment& x);

}  // namespace moelab
