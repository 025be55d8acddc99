#pragma once
// The forgetting evaluation (docs/methods.md §2.6) as a trainer hook: the [eval] evaluation set,
// filtered to the samples the model recalls (M_ex = 1) at the end of phase filter_after, or by
// the init_from model before step 1 (filter_at = "start"), then evaluated every forgetting_every
// steps and at phase ends. The filtered set is the run's file evalset.frozen.jsonl; a run whose
// filtered set holds fewer than eval.min_recalled samples stops, keeping its checkpoint.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/evalset.hpp"
#include "train/experiment.hpp"
#include "train/hook.hpp"

namespace moelab {

class ForgettingHook : public TrainerHook {
 public:
  explicit ForgettingHook(const Experiment& x);

  void on_open(Trainer& t) override;
  void restore_state(Trainer& t, const nlohmann::json& state, const std::string& ckpt) override;
  void run_info(nlohmann::ordered_json& run) const override;
  void on_start(Trainer& t) override;
  void on_evaluate(Trainer& t, const StepStats& r) override;
  void metrics(const StepStats& r, nlohmann::ordered_json& fields) const override;
  void on_step_end(Trainer& t, const StepStats& r) override;

 private:
  void at_start(Trainer& t);
  // Filters the set and logs into `line` its counts ("evalset") and which candidates it kept
  // ("recalled", one character per candidate).
  void filter(Trainer& t, nlohmann::ordered_json& line);
  nlohmann::ordered_json evaluate_frozen(Trainer& t) const;
  EvalSet frozen_load(Trainer& t) const;
  std::string recalled_shortfall() const;
  void recalled_check() const;

  const Experiment x_;
  const std::string frozen_path_;
  EvalSet full_set_, frozen_;  // the evaluation set, and its part frozen at the filtering
  bool have_frozen_ = false;
  std::string too_few_;          // why the frozen set cannot measure forgetting ("" while it can)
  nlohmann::ordered_json line_;  // the last step's "forgetting" field (null: none)
};

}  // namespace moelab
