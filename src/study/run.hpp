#pragma once
// `moelab run`: the forgetting study of docs/methods.md §1 from one experiment. The dense model of
// [model] and its iso-total MoE variants ([study] experts, top_k) train on the same data order and
// seed, A then B, each filtering the shared evaluation set to its own M_ex = 1 samples after A;
// then the report is written. Variants run one after another; a finished one is skipped and a
// stopped one resumes, so re-running the command continues the study.
#include <cstdint>
#include <string>
#include <vector>

#include "train/experiment.hpp"

namespace moelab {

struct StudyOptions {
  std::vector<int64_t> experts, seeds;  // override [study] when non-empty
  bool report = true;
};

struct StudyVariant {
  int64_t experts = 1, top_k = 1, seed = 1;
  std::string dir;  // relative to the study folder, e.g. "E8_s1"
};

// The variants in run order (seed-major, then E as listed).
std::vector<StudyVariant> study_variants(const Experiment& x, const StudyOptions& o);

// Returns 0 when every variant finished (and the report is written), 130 when interrupted.
int study_run(const Experiment& x, const StudyOptions& o);

}  // namespace moelab
