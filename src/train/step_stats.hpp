#pragma once
// What an optimizer step takes and what it did: its micro-batches, its losses and router
// statistics, and their sums over the ranks of a data-parallel run.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.hpp"
#include "train/collective.hpp"

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

// What one micro-batch of a run's step trained on (also one that another rank computed).
struct TrainedBatch {
  std::string subset;
  std::vector<uint64_t> sequences;  // [batch_size] indices in the subset's training loader
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
  std::vector<TrainedBatch> trained;             // a run's step: its micro-batches, in order
  double total() const { return lm + aux + z; }
};

// Sums a micro-batch's raw router losses into one entry per routed layer (those with counts).
void step_stats_add_router(std::vector<RouterStats>& router, const Losses& l,
                           const std::vector<std::vector<int64_t>>& counts);
// The micro-batches' means, and each routed layer's largest load of the step relative to the
// fair share 1/E.
void step_stats_finish_router(std::vector<RouterStats>& router,
                              const std::vector<std::vector<int64_t>>& counts, double accum);
// The step's losses and router sums over the ranks, in place (every rank the same order).
void step_stats_sum(Collective& comm, StepStats& r);
// The step's numbers in a metrics line: loss, lr, grad_norm and, for an MoE, the router's losses,
// the expert loads and the per-layer router statistics.
void step_stats_log(const StepStats& r, nlohmann::ordered_json& line);

}  // namespace moelab
