#pragma once
// `moelab sweep plan|run`: IsoFLOP sweeps over sparsity (docs/methods.md §7). From a dense base
// model, training budgets C (FLOPs), sparsities S = (E - K) / E and model sizes (hidden widths),
// a grid of runs whose tokens D follow from C and the exact training FLOPs per token; each run
// is an ordinary training run folder, the grid a resumable queue that several processes (or
// machines sharing the folder) work through without clashing, and the results one CSV that
// `moelab fit` reads.
//
// The file is an experiment TOML without [model] and [[phases]], plus [sweep]:
//
//   [sweep]
//   base = "configs/models/demo-dense.json"  # the dense model: widths scale it
//   subset = "A"                             # trained on (one phase); its held-out loss is L
//   budgets = [1e15, 3e15]                   # training FLOPs per run
//   sparsities = [0, 0.5, 0.75]              # S: E = top_k / (1 - S) must be an integer
//   top_k = 1
//   sizes = [64, 96]                         # hidden widths (heads, FFN width scale with them)
//   aux_coefs = [0.01]                       # router_aux_loss_coef per run (a sweep axis)
//   bias_rates = [0, 0.001]                  # router_balance.bias_rate (loss-free balancing)
//   seeds = [1]
//   max_epochs = 1.0                         # refuse runs that need more passes over the subset
//   extra_budget = 1e15                      # widths added at that budget only (its
//   extra_sizes = [32]                       #   optimum below the shared widths)
//   repeat_budget = 1e15                     # that budget's grid again under each of
//   repeat_seeds = [2]                       #   these seeds: the noise floor
//
// Runs go to RUN/<job>/ (experiment.toml, model.json, the run); RUN/sweep.csv collects the final
// and best held-out loss of every finished run with N, N_active, S, D and C.
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace moelab {

struct SweepJob {
  std::string name;  // folder under RUN
  double budget = 0, sparsity = 0, aux_coef = 0, bias_rate = 0;
  int64_t size = 0, experts = 1, top_k = 1, seed = 1;
  ModelConfig model;
  double flops_per_token = 0;  // exact training FLOPs per token (methods.md §4.2)
  int64_t steps = 0, tokens = 0;
  double epochs = 0;                                 // passes over the subset's training split
  int64_t params = 0, active = 0;                    // every parameter; active per token
  int64_t params_nonembed = 0, active_nonembed = 0;  // without the embedding and the LM head
};

struct SweepPlanOptions {
  bool measure = true;                 // time one step of each model for the time estimates
  std::vector<std::string> overrides;  // --set key=value, applied to the file as read
};
// Prints the grid (N, N_active, S, D, tokens per parameter, steps, epochs, estimated time);
// refuses, in one line, a budget too small for one step, a sparsity with no integer E, or a
// run that needs more than max_epochs passes over the data.
void sweep_plan_print(const std::string& config, const SweepPlanOptions& o);

struct SweepRunOptions {
  int64_t job = -1;      // run only job #job of the plan (a SLURM array task); -1: the queue
  bool slurm = false;    // write RUN/sweep.slurm (a job array) instead of running
  bool restart = false;  // discard the jobs of an earlier sweep in the folder first
  std::vector<std::string> overrides;  // --set key=value: here, and in RUN/sweep.slurm's command
};
// Works through the queue: takes each job nobody holds (a file lock per job), resumes a stopped
// one, skips finished ones, then rewrites RUN/sweep.csv. Returns 0, 130 when interrupted, or 3
// (kStudyFailedRuns) when jobs failed: each is recorded (RUN/<job>/failed.json) and the others
// went on. A folder holding a sweep started under other settings (RUN/settings.json, the grid's
// axes aside) is refused in one line before anything runs, unless o.restart discards its jobs.
int sweep_run(const std::string& config, const SweepRunOptions& o);

// RUN/sweep.csv from the finished runs under RUN (atomic; safe against concurrent writers).
// Returns its path.
std::string sweep_collect(const std::string& config,
                          const std::vector<std::string>& overrides = {});

}  // namespace moelab
