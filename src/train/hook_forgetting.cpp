#include "train/hook_forgetting.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.hpp"
#include "core/signals.hpp"
#include "train/checkpoint.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// "1011...": one character per sample.
std::string hits_string(const std::vector<bool>& hits) {
  std::string s(hits.size(), '0');
  for (size_t i = 0; i < hits.size(); i++) {
    if (hits[i]) {
      s[i] = '1';
    }
  }
  return s;
}

}  // namespace

ForgettingHook::ForgettingHook(const Experiment& x)
    : x_(x), frozen_path_((fs::path(x.run_dir) / "evalset.frozen.jsonl").string()) {}

void ForgettingHook::on_open(Trainer& t) {
  if (x_.evalset.empty()) {
    return;
  }
  full_set_ =
      evalset_load(x_.evalset, t.data().fingerprint,
                   {t.data().vocab_size, x_.model.vocab_size, x_.model.max_position_embeddings});
  // Nothing in it can be recalled: a run that needs some would stop at the filtering, maybe
  // hours from now; it stops here instead.
  if (full_set_.samples.empty() && x_.min_recalled > 0) {
    fail(fmt::format(
        "{}: the evaluation set has no samples, fewer than eval.min_recalled = {} can be "
        "recalled, so forgetting cannot be measured; stopped before training. Build one with "
        "samples (eval.min_recalled = 0 trains without forgetting metrics)",
        x_.evalset, x_.min_recalled));
  }
}

void ForgettingHook::restore_state(Trainer&, const json&, const std::string& ckpt) {
  // The base model's recalled set (filter_at = "start") is the run's from its start on.
  std::error_code ec;
  if (!x_.evalset.empty() && x_.filter_at == "start" && !fs::exists(frozen_path_, ec)) {
    fail(fmt::format(
        "{}: missing; the set the base model recalled before step 1 cannot be rebuilt for {} "
        "(start the run again in a new run.dir)",
        frozen_path_, ckpt));
  }
}

void ForgettingHook::run_info(ojson& run) const {
  run["filter_after"] = x_.evalset.empty() ? "" : x_.filter_after;
  run["filter_at"] = x_.evalset.empty() ? "" : x_.filter_at;
  run["min_recalled"] = x_.min_recalled;
}

void ForgettingHook::on_start(Trainer& t) {
  std::error_code ec;
  if (x_.evalset.empty()) {
    if (t.steps_done() == 0) {  // left by a run that stopped before its first checkpoint
      fs::remove(frozen_path_, ec);
    }
    return;
  }
  if (x_.filter_at == "start") {
    return at_start(t);
  }
  int64_t filter_end = 0;
  for (const PhaseConfig& p : x_.phases) {
    filter_end += x_.phase_steps(p);
    if (p.name == x_.filter_after) {
      break;
    }
  }
  // The frozen set belongs to the checkpoint only if that comes after the filtering; one written
  // just before a crash is rebuilt at the same step, so the metrics equal an unbroken run's.
  if (!fs::exists(frozen_path_, ec)) {
    return;
  }
  if (t.steps_done() >= filter_end) {
    frozen_ = frozen_load(t);
    have_frozen_ = true;
    too_few_ = recalled_shortfall();
    recalled_check();  // a resumed run that could not measure forgetting stops again
  } else {
    fs::remove(frozen_path_, ec);
  }
}

// filter_at = "start" (methods.md §5.5): the set the init_from model recalls, filtered before
// step 1 and logged as step 0; a resumed run keeps the one of its start.
void ForgettingHook::at_start(Trainer& t) {
  if (t.steps_done() > 0) {  // restore_state made sure that it is there
    frozen_ = frozen_load(t);
    have_frozen_ = true;
  } else {
    ojson forgetting;
    filter(t, forgetting);
    if (!frozen_.samples.empty()) {
      forgetting["metrics"] = evaluate_frozen(t);
    }
    t.metrics_write({{"step", 0},
                     {"phase", x_.phases.front().name},
                     {"tokens", 0},
                     {"forgetting", forgetting}});
  }
  too_few_ = recalled_shortfall();
  recalled_check();
}

void ForgettingHook::on_evaluate(Trainer& t, const StepStats& r) {
  line_ = ojson();
  if (x_.evalset.empty()) {
    return;
  }
  const Activity doing("evaluation");
  const bool phase_done = t.phase_ends_at(r.step);
  if (x_.filter_at == "phase_end" && phase_done && x_.phases[r.phase].name == x_.filter_after &&
      !have_frozen_) {
    // Keep the samples this model recalls (M_ex = 1); the same ones for the rest of the run.
    filter(t, line_);
    too_few_ = recalled_shortfall();  // the run stops after this step's checkpoint
  }
  const bool due = have_frozen_ && !frozen_.samples.empty() &&
                   ((x_.forgetting_every > 0 && r.step % x_.forgetting_every == 0) ||
                    line_.contains("evalset") || phase_done);
  if (due) {
    line_["metrics"] = evaluate_frozen(t);
  }
}

void ForgettingHook::metrics(const StepStats&, ojson& fields) const {
  if (!line_.is_null()) {
    fields["forgetting"] = line_;
  }
}

// After the checkpoint of the step that filtered the evaluation set.
void ForgettingHook::on_step_end(Trainer&, const StepStats&) {
  recalled_check();
}

// Keeps the samples this model recalls (M_ex = 1), frozen for the rest of the run. Returns the
// counts for the metrics line.
void ForgettingHook::filter(Trainer& t, ojson& line) {
  const Activity doing("evaluation");
  // An empty set keeps nothing (eval.min_recalled = 0 let the run go on without one).
  std::vector<bool> recalled;
  if (!full_set_.samples.empty()) {
    recalled =
        moelab::evaluate(t.model(), *t.data().tokenizer, full_set_, x_.forgetting_batch).ex_hit;
  }
  frozen_ = full_set_.samples.empty() ? full_set_ : evalset_filter(full_set_, recalled);
  evalset_write(frozen_path_, frozen_);
  have_frozen_ = true;
  line["evalset"] = {{"samples", full_set_.samples.size()}, {"kept", frozen_.samples.size()}};
  // Which candidates were kept, so that a report can compare models on the samples all of them
  // recalled.
  line["recalled"] = hits_string(recalled);
}

ojson ForgettingHook::evaluate_frozen(Trainer& t) const {
  const EvalReport report =
      moelab::evaluate(t.model(), *t.data().tokenizer, frozen_, x_.forgetting_batch);
  ojson metrics = evalreport_json(report);
  // Per sample of the frozen set, in its order: M_ex = 1 or 0 (a report's shared set and its
  // bootstrap over samples need them).
  metrics["m_ex_hits"] = hits_string(report.ex_hit);
  return metrics;
}

EvalSet ForgettingHook::frozen_load(Trainer& t) const {
  return evalset_load(frozen_path_, t.data().fingerprint,
                      {t.data().vocab_size, x_.model.vocab_size, x_.model.max_position_embeddings});
}

// The one line that stops a run whose frozen set is too small to measure forgetting on, or "".
std::string ForgettingHook::recalled_shortfall() const {
  const int64_t kept = int64_t(frozen_.samples.size());
  if (kept >= x_.min_recalled) {
    return "";
  }
  const std::string counts = fmt::format(
      "recalls {} of the {} evaluation samples (M_ex = 1), fewer than eval.min_recalled = {}, so "
      "forgetting cannot be measured",
      kept, full_set_.samples.size(), x_.min_recalled);
  if (x_.filter_at == "start") {
    return fmt::format(
        "{}: before step 1 the base model (model.init_from = {}) {}; stopped before training. Use "
        "a base trained longer on its data, a larger one, or entities that recur more often in "
        "that data (eval.min_recalled = 0 goes on anyway)",
        x_.source, x_.init_from, counts);
  }
  return fmt::format(
      "{}: after phase {} the model {}; stopped. Train {} for more epochs, use a larger model, or "
      "choose entities that recur more often in {} (eval.min_recalled = 0 goes on anyway)",
      x_.source, x_.filter_after, counts, x_.filter_after, x_.filter_after);
}

// Stops the run (one line, exit 1) when the filtered set holds fewer than eval.min_recalled
// samples: it cannot measure forgetting.
void ForgettingHook::recalled_check() const {
  if (too_few_.empty()) {
    return;
  }
  const auto list = checkpoint_list(x_.run_dir);
  if (list.empty() || x_.filter_at == "start") {
    fail(too_few_);
  }
  fail(fmt::format("{}; the checkpoint {} is kept", too_few_, list.back()));
}

}  // namespace moelab
