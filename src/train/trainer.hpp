#pragma once
// The trainer: phases over data subsets with one optimizer and one schedule across them,
// gradient accumulation, clipping, periodic validation, metrics.jsonl, checkpoints at phase
// ends and every N steps, exact resume, and a checkpoint on SIGINT/SIGTERM.
#include "train/experiment.hpp"

namespace moelab {

// Returns 0 when the run completed, 130 when it was interrupted (after saving a checkpoint).
// Errors (a non-finite loss, a full disk, a checkpoint of another config) throw with one line.
int train_run(const Experiment& x, bool resume);

}  // namespace moelab
