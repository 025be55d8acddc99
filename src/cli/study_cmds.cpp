// moelab run (the forgetting study), moelab report, moelab ct (the continual-training study).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "study/ct.hpp"
#include "study/report.hpp"
#include "study/run.hpp"
#include "train/experiment.hpp"

namespace moelab {

namespace {

struct RunOptions {
  std::string config;
  std::vector<std::string> sets;
  bool no_report = false;
  StudyOptions study;
};

}  // namespace

void command_run(CLI::App& app, Commands& c) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand(
      "run", "the forgetting study: dense and iso-total MoE variants, A then B, and the report");
  cmd->add_option("config", o->config, "experiment TOML with a [study] section")->required();
  cmd->add_option("--set", o->sets, "override a key: section.key=value (repeatable)");
  cmd->add_option("--seeds", o->study.seeds, "seeds, e.g. 1,2,3 (default: [study] seeds)")
      ->delimiter(',');
  cmd->add_option("--experts", o->study.experts, "expert counts, e.g. 1,8 (default: [study])")
      ->delimiter(',');
  cmd->add_flag("--no-report", o->no_report, "train only");
  cmd->add_flag("--restart", o->study.restart,
                "discard the runs of an earlier study in run.dir first (one started under other "
                "settings is refused otherwise)");
  cmd->footer(
      "Exit status: 0 when every run finished and the report is written, 130 when interrupted "
      "(run the same command again to continue), 3 when some runs failed: the others went on, "
      "each failure is recorded in its run folder (failed.json) and listed in the report, whose "
      "statistics are over the runs that finished. 1: an error before or instead of training "
      "(bad input, or a run.dir holding a study started under other settings, settings.json).");
  c.add(cmd, [o] {
    o->study.report = !o->no_report;
    return study_run(experiment_load(o->config, o->sets), o->study);
  });
}

void command_report(CLI::App& app, Commands& c) {
  auto o = std::make_shared<ReportOptions>();
  auto no_plots = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("report", "figures and a summary of runs or studies");
  cmd->add_option("dirs", o->dirs, "study folders or run folders")->required();
  cmd->add_option("--out", o->out, "output folder (default: FIRST/report)");
  cmd->add_flag("--no-plots", *no_plots, "write the gnuplot scripts without running them");
  c.add(cmd, [o, no_plots] {
    o->plots = !*no_plots;
    std::printf("%s\n", report_write(*o).c_str());
    return 0;
  });
}

void command_ct(CLI::App& app, Commands& c) {
  auto o = std::make_shared<CtOptions>();
  auto config = std::make_shared<std::string>();
  auto flags = std::make_shared<std::pair<bool, bool>>(false, false);  // no report, report only
  auto no_plots = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand(
      "ct", "the continual-training study: full, LoRA and MoE-CT from a base, and the report");
  cmd->add_option("config", *config, "experiment TOML with a [ct] section")->required();
  cmd->add_option("--seeds", o->seeds, "seeds, e.g. 1,2,3 (default: [ct] seeds)")->delimiter(',');
  cmd->add_option("--methods", o->methods, "methods by name, e.g. full,lora (default: all)")
      ->delimiter(',');
  cmd->add_flag("--no-report", flags->first, "train only");
  cmd->add_flag("--report-only", flags->second, "write the report of the runs so far");
  cmd->add_flag("--no-plots", *no_plots, "write the gnuplot scripts without running them");
  cmd->add_flag("--restart", o->restart,
                "discard the runs of an earlier study in [run] dir first (one started under "
                "other settings is refused otherwise)");
  cmd->footer(
      "Exit status: 0 when every run finished and the report is written, 130 when interrupted "
      "(run the same command again to continue), 3 when some runs or their final measurements "
      "failed: the others went on, each failure is recorded (RUN/<method>/seed_<s>/failed.json) "
      "and listed in the report, whose statistics are over the runs that finished. 1: an error "
      "before or instead of training (bad input, or a folder holding a study started under "
      "other settings, settings.json).");
  c.add(cmd, [o, config, flags, no_plots] {
    o->report = !flags->first;
    o->plots = !*no_plots;
    if (flags->second) {
      std::printf("%s\n", ct_report_write(ct_run_dir(*config), "", o->plots).c_str());
      return 0;
    }
    return ct_run(*config, *o);
  });
}

}  // namespace moelab
