#pragma once
// `moelab study report`: figures (gnuplot, PNG and SVG) and a markdown summary of one or more runs
// or studies: M_ex and M_in vs step with every model on one chart (the original's Figure 2),
// training and validation loss (Figure 3), the LR schedule (Figure 4) and the per-layer expert
// load over time; seeds of one model are averaged, their spread shown as a band. A folder of the
// continual-training study (`moelab study ct`, ct.json) gets that study's report (study/ct.hpp).
// What it reads from run folders, and the statistics over seeds: study/runs.hpp.
#include <string>
#include <vector>

#include "study/report_kit.hpp"
#include "study/runs.hpp"

namespace moelab {

struct ReportOptions {
  std::vector<std::string> dirs;  // study folders (study.json) or run folders (metrics.jsonl)
  std::string out;                // default: DIR/report of the first folder
  bool plots = true;              // false: write the gnuplot scripts without running them
};

// Returns the path of the summary (OUT/summary.md).
std::string report_write(const ReportOptions& o);

// The final-model part of the `moelab study ct` report (study/ct_report_ders.cpp): size, memory,
// speed and quality of each method's final model and of each DeRS compression of one, a figure of
// quality against bytes, and a reading of what each compression cost. From RUN/ct.json (`ct`),
// the runs' final_eval.json and RUN/compress/*/seed_*/eval.json.
struct DersSection {
  std::string md;                    // empty when no final model was measured
  std::vector<std::string> figures;  // stems written in `out`
  ojson summary = ojson::array();
};
DersSection ct_report_ders(const std::string& dir, const ojson& ct, const std::string& out,
                           bool plots);

}  // namespace moelab
