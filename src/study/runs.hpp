#pragma once
// What the reports read from a run folder written by `moelab train` (run.json, metrics.jsonl,
// failed.json) and the statistics over the seeds of a model, shared by the forgetting study's
// report, the continual-training one and the sweep's results.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "study/failure.hpp"
#include "study/matched.hpp"
#include "study/report_kit.hpp"
#include "study/stats.hpp"

namespace moelab {

// One run folder: run.json and the series of metrics.jsonl.
struct RunData {
  std::string dir;
  nlohmann::json run;  // run.json
  int64_t experts = 1, top_k = 1, seed = 1, switch_step = -1, tokens_per_step = 0;
  std::string subset_a, subset_b;  // the subsets of the first two phases
  // From the study's list (study.json), where the run is one of its variants: its name there
  // ("" for a run folder read alone) and, for a dense control, the MoE variant's E it matches.
  std::string variant;
  int64_t matches = 0;
  bool has_evalset = false;  // the run was given an evaluation set
  // loss, lr, m_ex, m_in, m_f, ppl_ent, tokens_per_s, val:X; an upcycled run of the DeRS study
  // also cos_dense and cos_pairs (its experts' cosine to the dense FFN and between experts)
  std::map<std::string, Series> s;
  std::map<int64_t, std::vector<std::vector<double>>> load;  // step -> [layer][expert]
  // The filtering of the evaluation set (methods.md §2.6): candidates and samples kept (M_ex = 1),
  // from its metrics record or else from evalset.frozen.jsonl; -1: not known.
  int64_t kept = -1, candidates = -1;
  std::string recalled;  // per candidate, '1' where it was kept ("" from an older moelab)
  std::map<int64_t, std::string> m_ex_hits;  // step -> per kept sample, '1' where M_ex = 1
  int64_t min_recalled = 0;                  // fewer kept stopped the run (eval.min_recalled)
  int64_t last_step = 0, bad_lines = 0;
  // The run stopped with an error (RUN_DIR/failed.json): reports leave it out of their numbers
  // and comparisons and list it with its reason.
  std::optional<RunFailure> failure;
};

RunData run_read(const std::string& dir);
double run_last(const RunData& r, const std::string& key);  // NaN where absent
double run_at(const RunData& r, const std::string& key, int64_t step);
// The last value logged after `step` (NaN where none is).
double run_last_after(const RunData& r, const std::string& key, int64_t step);

// "; the run stopped at step S of N" for an unfinished run, else "".
std::string run_stopped(const RunData& r);

// Why a run's evaluation set gave no forgetting metrics, or "" where it should have: none was
// given, or the model recalled none or too few of its samples when the set was filtered (`when`:
// "after A", "at the start"); `fix_none` and `fix_few` end those two lines.
struct RecallWords {
  std::string section, when, its, fix_none, fix_few;  // its: "its " or ""
};
std::string run_recall_cause(const RunData& r, const RecallWords& w);

// A run that failed before it logged anything (no run.json or metrics.jsonl): its folder and the
// record of its failure.
RunData run_failed_only(const std::string& dir, const RunFailure& f);

// Mean and min-max spread over runs at the steps every run has.
struct Agg {
  std::vector<double> x, mean, lo, hi;
};
Agg runs_aggregate(const std::vector<RunData>& runs, const std::string& key,
                   int64_t from_step = -1);

// Adds the mean of `a` to the chart (its spread as a band where `band`), unless `a` is empty.
void chart_add(PlotChart& c, const Agg& a, std::string title, int color, int dash, bool band);

// One number per run, summarised: null (none finite), the value (one), or {mean, sd, n}.
nlohmann::ordered_json runs_stat(const std::vector<RunData>& runs,
                                 const std::function<double(const RunData&)>& per_run);
// One number per run, by seed (for paired comparisons, study/stats.hpp).
SeedValues runs_seed_values(const std::vector<RunData>& runs,
                            const std::function<double(const RunData&)>& per_run);
// The median of a run's tokens_per_s (forgetting evaluations slow some windows).
double run_median_tokens_per_s(const RunData& r);

}  // namespace moelab
