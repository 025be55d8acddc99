// moelab sweep plan, moelab sweep run: IsoFLOP sweeps over sparsity (study/sweep.hpp).
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "study/sweep.hpp"

namespace moelab {

void command_sweep_plan(CLI::App& sweep, Commands& c) {
  auto config = std::make_shared<std::string>();
  auto o = std::make_shared<SweepPlanOptions>();
  auto no_measure = std::make_shared<bool>(false);
  auto* cmd = sweep.add_subcommand(
      "plan", "the grid of runs: N, N_active, S, D, tokens per parameter, epochs, time");
  cmd->add_option("config", *config, "sweep TOML (an experiment file with [sweep])")->required();
  cmd->add_flag("--no-measure", *no_measure, "skip timing one step of each model");
  c.add(cmd, [config, o, no_measure] {
    o->measure = !*no_measure;
    return sweep_plan_print(*config, *o), 0;
  });
}

void command_sweep_run(CLI::App& sweep, Commands& c) {
  auto config = std::make_shared<std::string>();
  auto o = std::make_shared<SweepRunOptions>();
  auto* cmd = sweep.add_subcommand(
      "run", "work through the grid (resumable; several processes share it), then RUN/sweep.csv");
  cmd->add_option("config", *config, "sweep TOML")->required();
  cmd->add_option("--job", o->job, "run only this job of the plan (0-based; a SLURM array task)");
  cmd->add_flag("--slurm", o->slurm, "write RUN/sweep.slurm (a job array) instead of running");
  cmd->add_flag("--restart", o->restart,
                "discard the jobs of an earlier sweep in [run] dir first (one started under other "
                "settings is refused otherwise); stop its workers before");
  cmd->footer(
      "Each job is a run folder RUN/<job>/ held by a file lock while it trains: start this "
      "command in several processes (or on machines sharing the folder) and they split the "
      "grid; a stopped or killed job resumes from its last checkpoint when a worker next takes "
      "it. Exit status: 0, 130 when interrupted, 3 when jobs failed (each recorded in "
      "RUN/<job>/failed.json and left out of sweep.csv; the others went on), 1 on an error "
      "before training, such as a folder holding a sweep started under other settings "
      "(RUN/settings.json; the grid's axes may grow).");
  c.add(cmd, [config, o] { return sweep_run(*config, *o); });
}

}  // namespace moelab
