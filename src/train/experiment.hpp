#pragma once
// Experiment configs (TOML): model, data, phases, optimizer, schedule, checkpointing and eval.
// Every key can be overridden from the command line with --set section.key=value (arrays of
// tables by index: --set phases.1.steps=500). Unknown keys and bad values fail with one line
// naming them.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.hpp"
#include "train/adamw.hpp"
#include "train/schedule.hpp"
#include "train/toml_section.hpp"

namespace moelab {

struct PhaseConfig {
  std::string name;
  std::string subset;
  int64_t steps = 0;  // one of steps / tokens
  int64_t tokens = 0;
  // Replay (methods.md §5.1, §5.4). "mix": each micro-batch comes from replay_subset with
  // probability replay_ratio. "focused": focused stochasticity, extra optimizer updates on
  // batches drawn from a memory of sequences trained on (replay_subset empty: everything this
  // run trained on; else sequences of replay_subset in its loader's order).
  std::string replay = "mix";
  std::string replay_subset;
  double replay_ratio = 0;
  int64_t replay_every = 100;       // focused: a replay after every replay_every steps of the phase
  int64_t replay_exit = 5;          // focused: a sample leaves the memory after this many replays
  int64_t replay_repeat = 1;        // focused: updates on each replay batch (f; > 1: intensive)
  int64_t replay_memory = 1 << 20;  // focused: at most this many sequences in the memory
  bool focused() const { return replay == "focused"; }
};

struct Experiment {
  std::string source;  // the config file, for messages
  std::string text;    // its contents as read (after --set), JSON: every rank must run the same
  // [run]
  std::string run_dir = "runs/default";
  uint64_t seed = 1;
  int threads = 0;
  int64_t log_every = 1;
  double peak_gflops = 0;  // the FMA peak MFU is quoted against; 0: measured at start (0.3 s)
  // [model]
  ModelConfig model;
  std::string init_from;  // a checkpoint whose tensors a fresh run starts from ("": none)
  // [data]
  std::string data_dir;
  int64_t seq_len = 256;
  // [train]
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  double clip = 1.0;
  bool skip_nonfinite = false;
  int64_t max_skips = 10;  // with skip_nonfinite: stop after this many skipped steps in a row
  std::vector<std::string> freeze;  // ECMAScript regexes on tensor names: not trained
  // data parallel: ZeRO-1, each rank keeps 1/P of the AdamW moments (train/zero.hpp)
  bool zero = true;
  // [optimizer], [schedule]
  AdamWConfig optimizer;
  Schedule schedule;
  std::string decay_at = "end";  // "end", "phase:NAME" (end of that phase) or a step number
  // [[phases]]
  std::vector<PhaseConfig> phases;
  // [checkpoint]
  int64_t checkpoint_every = 0;  // 0: only at phase ends and on interruption
  int keep_last = 3;
  // [eval]
  int64_t eval_every = 0;  // validation loss on every subset's held-out slice, 0 = off
  int64_t eval_batches = 4;
  // forgetting metrics (methods.md §2.6): an evaluation set from `moelab entities build`, filtered
  // to M_ex = 1 at the end of phase `filter_after` (or, filter_at = "start", by the init_from
  // model before step 1) and evaluated every forgetting_every steps after. Fewer than
  // min_recalled samples kept stop the run: it could not measure forgetting.
  std::string evalset;
  std::string filter_at = "phase_end";  // "phase_end" | "start"
  std::string filter_after;             // default: the first phase
  int64_t min_recalled = 5;
  int64_t forgetting_every = 0;
  int64_t forgetting_batch = 64;
  // Sections that a layer above reads itself ([study]: study/run.hpp), as parsed, for a
  // ConfigSection there. The trainer ignores them.
  std::map<std::string, nlohmann::json> sections_above;

  int64_t tokens_per_step() const { return batch_size * grad_accum * seq_len; }
  int64_t phase_steps(const PhaseConfig& p) const;  // steps, or tokens rounded up to steps
  int64_t total_steps() const;
  // The phase that the step after `steps_done` steps falls in, and the step count that ends it
  // (past the last phase: index = the number of phases).
  struct PhaseAt {
    size_t index;
    int64_t end;
  };
  PhaseAt phase_at(int64_t steps_done) const;
};

// Reads a TOML file and applies the overrides ("key=value", dotted keys, TOML values).
Experiment experiment_load(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace moelab
