#pragma once
// A run's directory: claimed at the start (a new run, a resumed one, or one that stopped before
// its first checkpoint and starts again), its run.json, and its metrics.jsonl cut back to the
// step a run resumes at.
#include <cstdint>
#include <string>

#include "model/config.hpp"
#include "train/experiment.hpp"
#include "train/hook.hpp"

namespace moelab {

// The checkpoint a start continues from ("" for step 0), and whether a run stopped there before
// its first checkpoint: it held nothing worth keeping and starts again, by a plain start or by
// --resume, instead of being refused both ways.
struct RunClaim {
  std::string ckpt;
  bool stale = false;
};
RunClaim run_dir_claim(const Experiment& x, bool resume);
// Creates the run directory; `stale` (RunClaim): first removes what the stopped run left
// (metrics.jsonl, run.json; a hook's own files go at its on_start).
void run_dir_create(const Experiment& x, bool stale);
// "the last good checkpoint is DIR", or that none was written yet: for a stopped run's line.
std::string run_dir_last_good(const std::string& run_dir);
// run.json: what a report needs to know about this run without re-reading the TOML; the hooks
// add theirs after "total_steps".
void run_dir_write_info(const Experiment& x, const FlopCounts& flops, const TrainerHooks& hooks);
// Keeps the metrics lines of steps <= step (a resumed run rewrites what came after).
void run_dir_truncate_metrics(const std::string& path, int64_t step);

}  // namespace moelab
