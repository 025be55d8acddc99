#pragma once
// `moelab study forgetting`: the forgetting study of docs/methods.md §1 from one experiment. The
// dense model of [model] and its iso-total MoE variants ([study] experts, top_k) train on the same
// data order and seed, A then B, each filtering the shared evaluation set to its own M_ex = 1
// samples after A; then the report is written. Variants run one after another; a finished one is
// skipped and a stopped one resumes, so re-running the command continues the study.
#include <cstdint>
#include <string>
#include <vector>

#include "study/settings.hpp"
#include "train/experiment.hpp"

namespace moelab {

// [study]: what `moelab study forgetting` varies around the experiment (methods.md §1.2): the dense
// model of [model] and its iso-total MoE variants, each over the seeds, all on one evaluation set.
struct StudyConfig {
  std::vector<int64_t> experts = {1, 8, 64};  // E per variant; E = 1 is the dense model itself
  int64_t top_k = 2;
  // Beside each MoE variant, a dense model with its active parameters (FFN width top_k x I / E),
  // so that "more experts" is not read off "fewer active parameters".
  bool dense_active = false;
  std::vector<int64_t> seeds;  // empty: run.seed
  // The evaluation set, built once per study unless [eval] evalset names one.
  std::string entities;            // entity list (${MOELAB_CACHE}/... allowed)
  std::string subset_a, subset_b;  // default: the subsets of the first two phases
  double top = 50, bottom = 50;
  int64_t prompt = 32, target = 32, max_samples = 2000, max_per_entity = 5;
  int64_t entity_seed = 1;
};

// Reads and checks the experiment's [study] section (defaults where it has none); one-line
// errors name the file and 'study.KEY'.
StudyConfig study_config_load(const Experiment& x);

struct StudyOptions {
  std::vector<int64_t> experts, seeds;  // override [study] when non-empty
  bool report = true;
  bool restart = false;  // discard the runs of an earlier study in the folder first
};

struct StudyVariant {
  int64_t experts = 1, top_k = 1, seed = 1;
  std::string dir;  // relative to the study folder, e.g. "E8_s1"
  // A dense control: the MoE variant (E, top-k) whose active parameters it has; 0 otherwise.
  int64_t matches = 0, matches_top_k = 0;
  std::string label() const;  // "dense (E=1)", "MoE E=8 top-2", "dense, active as E=8 top-2"
};

// The variants in run order (seed-major, then E as listed).
std::vector<StudyVariant> study_variants(const Experiment& x, const StudyConfig& sc,
                                         const StudyOptions& o);

// Returns 0 when every variant finished (and the report is written), 130 when interrupted, 3
// (kStudyFailedRuns, study/failure.hpp) when some variants failed: each is recorded in its
// folder and named in the report, and the others went on. A folder holding a study started
// under other settings (RUN/settings.json, study/settings.hpp) is refused in one line before
// anything is trained, unless o.restart discards its runs.
int study_run(const Experiment& x, const StudyOptions& o);

// The settings RUN/settings.json records for the study of x.
Settings study_settings(const Experiment& x);

}  // namespace moelab
