#pragma once
// What `moelab study ct` measures besides training (study/ct_measure.cpp): the held-out losses of a
// checkpoint on the study's batches, a final evaluation of a checkpoint (losses, forgetting
// metrics on its run's frozen set, memory, speed, and for an MoE the cosine similarity of its
// experts to the dense FFN), and the DeRS compressions of finished runs, each evaluated the same
// way.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.hpp"
#include "study/ct_config.hpp"
#include "train/hook.hpp"

namespace moelab {

// Mean held-out loss of the checkpoint `ckpt` on the validation batches of each subset, as the
// trainer validates (x.batch_size x x.seq_len, x.eval_batches batches).
nlohmann::ordered_json ct_losses(const std::string& ckpt, const std::vector<std::string>& subsets,
                                 const Experiment& x, const DataDir& data);

// The high-water resident set of this process since the last reset (Linux clear_refs); false
// where a reset is refused (the peak is then the process's).
bool ct_rss_peak_reset();
int64_t ct_rss_peak_now();

// RUN/<method>/seed_<s>/final_eval.json of every finished run, and every [[ct.compress]] entry
// at every seed: RUN/compress/<name>/seed_<s>/model (the compressed checkpoint) and eval.json.
// What exists is kept (a re-run measures only what is missing). A run whose base recalled no
// evaluation sample gets undefined forgetting metrics (null, samples 0). A measurement that
// fails is recorded beside its result (ct_measure_failure_path) and the others go on; returns
// what failed, one short phrase each.
std::vector<std::string> ct_measure_all(const CtConfig& c, const std::vector<CtRun>& runs,
                                        const DataDir& data);

// A training hook for an upcycled run: at every evaluation point the cosine similarity of its
// experts (base plus delta) to the dense FFN of the study's base checkpoint `base`, and between
// experts, as the metrics field "expert_cosine" ({to_dense_mean, to_dense_min, pairwise_mean,
// pairwise_min}): how far the copies moved apart over training, not only at the end.
std::unique_ptr<TrainerHook> ct_expert_cosine_hook(const std::string& base);

// Where the error of the measurement writing `result` is recorded: final_eval.json ->
// final_eval.failed.json.
std::string ct_measure_failure_path(const std::string& result);

}  // namespace moelab
