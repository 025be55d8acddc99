#pragma once
// `moelab study ct`: the continual-training study. A base checkpoint trained on an original domain
// goes on training on a new domain, once per method: every parameter (full), low-rank adapters
// with the base frozen (lora, methods.md §3.11), or new experts beside each frozen FFN (moe-ct,
// §3.12), each optionally replaying the original domain (§5.1, §5.4), over one or more seeds.
// Each run tracks the held-out loss on both domains and the forgetting metrics (methods.md §2)
// of the entity samples the base recalls (M_ex = 1 at the start), so the report shows what each
// method learned of the new domain against what it kept of the original one.
//
// The file is an experiment TOML without [model] and [[phases]] (the base checkpoint gives the
// model, [ct] the phase) plus a [ct] section:
//
//   [ct]
//   base = "runs/demo/dense/step_00000400"   # a moelab checkpoint folder
//   original = "A"                           # subset: held-out loss, replay source, entities
//   new = "B"                                # subset trained on
//   steps = 300
//   seeds = [1]                              # default: run.seed
//   [[ct.methods]]
//   name = "lora"
//   kind = "lora"                            # full | lora | moe-ct
//   lora = { rank = 8, alpha = 16, targets = ["self_attn"] }
//   replay_ratio = 0.1                       # and any other replay_* key of a phase
//
// Each method and seed becomes an ordinary training run, RUN/<method>/seed_<s>/, started from
// its own experiment file there (experiment.toml, written by this command: `moelab train` runs it
// as is). A finished run is skipped and a stopped one resumes, so re-running the command
// continues the study; then the report is written to RUN/report/.
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct CtOptions {
  std::vector<int64_t> seeds;          // override [ct] seeds when non-empty
  std::vector<std::string> methods;    // run only these methods (by name) when non-empty
  bool report = true;                  // write the report when every run has finished
  bool plots = true;                   // run gnuplot for the report's figures
  bool restart = false;                // discard the runs of an earlier study in the folder first
  std::vector<std::string> overrides;  // --set key=value, applied to the file as read
};

// Returns 0 when every run finished (and the report is written), 130 when interrupted, 3
// (kStudyFailedRuns, study/failure.hpp) when runs or their final measurements failed: each is
// recorded and named in the report, and the others went on. Bad input fails with one line
// naming the file and the key before anything is trained, and so does a folder holding a study
// started under other settings (RUN/settings.json, study/settings.hpp) unless o.restart
// discards its runs.
int ct_run(const std::string& config, const CtOptions& o);

// The run folder of a continual-training file ([run] dir), without checking the rest.
std::string ct_run_dir(const std::string& config, const std::vector<std::string>& overrides = {});

// The report of a continual-training folder (RUN/ct.json and its runs), into out (default
// RUN/report): the trade-off of held-out losses on both domains, M_ex and M_in along training,
// a table per method and a plain reading. Returns the path of summary.md.
std::string ct_report_write(const std::string& dir, const std::string& out = "", bool plots = true);

}  // namespace moelab
