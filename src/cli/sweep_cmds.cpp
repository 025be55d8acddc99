// moelab study sweep: IsoFLOP sweeps over sparsity (study/sweep.hpp); the grid with --plan, as
// the old moelab sweep plan printed it.
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "study/sweep.hpp"

namespace moelab {

namespace {

struct SweepCmdOptions {
  std::string config;
  ConfigOverrides overrides;
  bool plan = false, collect = false, no_measure = false;
  SweepRunOptions run;
};

int sweep_plan_run(const std::string& config, bool no_measure,
                   const std::vector<std::string>& overrides) {
  SweepPlanOptions o;
  o.measure = !no_measure;
  o.overrides = overrides;
  sweep_plan_print(config, o);
  return 0;
}

}  // namespace

void command_sweep_plan(CLI::App& cmd, Commands& c) {
  auto o = std::make_shared<SweepCmdOptions>();
  cmd.add_option("config", o->config, "sweep TOML (an experiment file with [sweep])")->required();
  cmd.add_flag("--no-measure", o->no_measure, "skip timing one step of each model");
  c.add(&cmd, [o] { return sweep_plan_run(o->config, o->no_measure, {}); });
}

void command_study_sweep(CLI::App& cmd, Commands& c) {
  auto o = std::make_shared<SweepCmdOptions>();
  cmd.add_option("config", o->config, "sweep TOML (an experiment file with [sweep])")->required();
  options_add_overrides(cmd, o->overrides);
  auto* plan = cmd.add_flag("--plan", o->plan,
                            "print the grid (N, N_active, S, D, tokens per parameter, epochs, "
                            "time) instead of running it");
  cmd.add_flag("--no-measure", o->no_measure, "with --plan: skip timing one step of each model")
      ->needs(plan);
  auto* job = cmd.add_option("--job", o->run.job,
                             "run only this job of the plan (0-based; a SLURM array task)");
  auto* slurm = cmd.add_flag("--slurm", o->run.slurm,
                             "write RUN/sweep.slurm (a job array) instead of running");
  auto* restart =
      cmd.add_flag("--restart", o->run.restart,
                   "discard the jobs of an earlier sweep in [run] dir first (one started under "
                   "other settings is refused otherwise); stop its workers before");
  auto* collect = cmd.add_flag("--collect", o->collect,
                               "rewrite RUN/sweep.csv from the runs finished so far, run nothing");
  plan->excludes(job)->excludes(slurm)->excludes(restart)->excludes(collect);
  collect->excludes(job)->excludes(slurm)->excludes(restart);
  cmd.footer(
      "Each job is a run folder RUN/<job>/ held by a file lock while it trains: start this "
      "command in several processes (or on machines sharing the folder) and they split the "
      "grid; a stopped or killed job resumes from its last checkpoint when a worker next takes "
      "it. Exit status: 0, 130 when interrupted, 3 when jobs failed (each recorded in "
      "RUN/<job>/failed.json and left out of sweep.csv; the others went on), 1 on an error "
      "before training, such as a folder holding a sweep started under other settings "
      "(RUN/settings.json; the grid's axes may grow).");
  c.add(&cmd, [o] {
    o->run.overrides = o->overrides.list();
    if (o->plan) {
      return sweep_plan_run(o->config, o->no_measure, o->run.overrides);
    }
    if (o->collect) {
      fmt::print("{}\n", sweep_collect(o->config, o->run.overrides));
      return 0;
    }
    return sweep_run(o->config, o->run);
  });
}

}  // namespace moelab
