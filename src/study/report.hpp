#pragma once
// `moelab report`: figures (gnuplot, PNG and SVG) and a markdown summary of one or more runs or
// studies: M_ex and M_in vs step with every model on one chart (the original's Figure 2),
// training and validation loss (Figure 3), the LR schedule (Figure 4) and the per-layer expert
// load over time; seeds of one model are averaged, their spread shown as a band. A folder of the
// continual-training study (`moelab ct`, ct.json) gets that study's report (study/ct.hpp).
//
// Below the entry point: what every report reads from a run folder and the statistics over
// seeds, shared by the forgetting study's report and the continual-training one.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <optional>

#include "study/failure.hpp"

namespace moelab {

struct ReportOptions {
  std::vector<std::string> dirs;  // study folders (study.json) or run folders (metrics.jsonl)
  std::string out;                // default: DIR/report of the first folder
  bool plots = true;              // false: write the gnuplot scripts without running them
};

// Returns the path of the summary (OUT/summary.md).
std::string report_write(const ReportOptions& o);

// ----------------------------------------------------------------------------
// reading runs

using Series = std::map<int64_t, double>;  // step -> value

// One run folder: run.json and the series of metrics.jsonl.
struct RunData {
  std::string dir;
  nlohmann::json run;  // run.json
  int64_t experts = 1, top_k = 1, seed = 1, switch_step = -1, tokens_per_step = 0;
  std::string subset_a, subset_b;   // the subsets of the first two phases
  bool has_evalset = false;         // the run was given an evaluation set
  std::map<std::string, Series> s;  // loss, lr, m_ex, m_in, m_f, ppl_ent, tokens_per_s, val:X
  std::map<int64_t, std::vector<std::vector<double>>> load;  // step -> [layer][expert]
  // The filtering of the evaluation set (methods.md §2.6): candidates and samples kept (M_ex = 1),
  // from its metrics record or else from evalset.frozen.jsonl; -1: not known.
  int64_t kept = -1, candidates = -1;
  int64_t min_recalled = 0;  // fewer kept stopped the run (eval.min_recalled)
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

// A run that failed before it logged anything (no run.json or metrics.jsonl): its folder and the
// record of its failure.
RunData run_failed_only(const std::string& dir, const RunFailure& f);

// Whether a statistic of the samples kept (M_ex = 1) says the model recalled none: every
// forgetting metric is then undefined ("n/a" in tables, null in JSON).
bool recalled_none(const nlohmann::ordered_json& kept);
// stat_format, or "n/a" where the recalled set was empty.
std::string stat_format_recalled(const nlohmann::ordered_json& v,
                                 const nlohmann::ordered_json& kept, int digits = 3);

// Mean and min-max spread over runs at the steps every run has.
struct Agg {
  std::vector<double> x, mean, lo, hi;
};
Agg runs_aggregate(const std::vector<RunData>& runs, const std::string& key,
                   int64_t from_step = -1);

// One number per run, summarised: null (none finite), the value (one), or {mean, sd, n}.
nlohmann::ordered_json runs_stat(const std::vector<RunData>& runs,
                                 const std::function<double(const RunData&)>& per_run);
// The same statistic of plain values (the non-finite ones left out).
nlohmann::ordered_json values_stat(std::vector<double> v);
double stat_mean(const nlohmann::ordered_json& v);  // NaN for null
// The standard error of a {mean, sd, n} statistic (sd / sqrt(n)); NaN for a single value.
double stat_std_err(const nlohmann::ordered_json& v);
std::string stat_format(const nlohmann::ordered_json& v, int digits = 3);  // "x" or "x ± sd"
std::string human_count(double n);                                         // 3.88M, 12.5k
// The median of a run's tokens_per_s (forgetting evaluations slow some windows).
double run_median_tokens_per_s(const RunData& r);

}  // namespace moelab
