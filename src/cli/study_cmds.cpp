// moelab study forgetting|ct|ders|sweep|report: the studies under one verb, and their old names
// (moelab run, ct, sweep plan, sweep run, report), hidden, for one release.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "study/ct.hpp"
#include "study/ct_config.hpp"
#include "study/report.hpp"
#include "study/run.hpp"
#include "study/study_page.hpp"
#include "train/experiment.hpp"

namespace moelab {

namespace {

constexpr const char* kForgettingAbout =
    "the forgetting study: dense and iso-total MoE variants, A then B, and the report";
constexpr const char* kCtAbout =
    "the continual-training study: full, LoRA and MoE-CT from a base, and the report";
constexpr const char* kDersAbout =
    "the DeRS study: upcycling with base-plus-delta experts and DeRS compression, and the report";
constexpr const char* kSweepAbout =
    "an IsoFLOP sweep over sparsity: the grid (--plan), its runs, then RUN/sweep.csv";
constexpr const char* kReportAbout = "figures and a summary of runs or studies";
constexpr const char* kViewAbout =
    "the HTML pages of runs and studies (RUN/view.html, STUDY/view.html), from their folders";

struct ForgettingOptions {
  std::string config;
  ConfigOverrides overrides;
  bool no_report = false;
  StudyOptions study;
};

void study_forgetting_setup(CLI::App& cmd, Commands& c) {
  auto o = std::make_shared<ForgettingOptions>();
  cmd.add_option("config", o->config, "experiment TOML with a [study] section")->required();
  options_add_overrides(cmd, o->overrides);
  cmd.add_option("--seeds", o->study.seeds, "seeds, e.g. 1,2,3 (default: [study] seeds)")
      ->delimiter(',');
  cmd.add_option("--experts", o->study.experts, "expert counts, e.g. 1,8 (default: [study])")
      ->delimiter(',');
  cmd.add_flag("--no-report", o->no_report, "train only");
  cmd.add_flag("--restart", o->study.restart,
               "discard the runs of an earlier study in run.dir first (one started under other "
               "settings is refused otherwise)");
  cmd.footer(
      "Exit status: 0 when every run finished and the report is written, 130 when interrupted "
      "(run the same command again to continue), 3 when some runs failed: the others went on, "
      "each failure is recorded in its run folder (failed.json) and listed in the report, whose "
      "statistics are over the runs that finished. 1: an error before or instead of training "
      "(bad input, or a run.dir holding a study started under other settings, settings.json).");
  c.add(&cmd, [o] {
    o->study.report = !o->no_report;
    return study_run(experiment_load(o->config, o->overrides.list()), o->study);
  });
}

void study_report_setup(CLI::App& cmd, Commands& c) {
  auto o = std::make_shared<ReportOptions>();
  auto no_plots = std::make_shared<bool>(false);
  cmd.add_option("dirs", o->dirs, "study folders or run folders")->required();
  cmd.add_option("--out", o->out, "output folder (default: FIRST/report)");
  cmd.add_flag("--no-plots", *no_plots, "write the gnuplot scripts without running them");
  c.add(&cmd, [o, no_plots] {
    o->plots = !*no_plots;
    std::printf("%s\n", report_write(*o).c_str());
    return 0;
  });
}

void study_view_setup(CLI::App& cmd, Commands& c) {
  auto dirs = std::make_shared<std::vector<std::string>>();
  cmd.add_option("dirs", *dirs, "run folders or study folders")->required();
  cmd.footer(
      "Training and the studies write these pages themselves as they go; this writes them again "
      "from what the folders hold now (a run that no process is training shows as stopped).");
  c.add(&cmd, [dirs] {
    for (const std::string& page : study_view_write(*dirs)) {
      std::printf("%s\n", page.c_str());
    }
    return 0;
  });
}

// Whether a continual-training file has a DeRS method: an upcycling whose experts are the base
// plus a delta, or a compression of a trained MoE. Its other problems fail as `study ct` fails.
bool ct_file_has_ders(const std::string& config, const std::vector<std::string>& overrides) {
  const toml::table root = ct_file_parse(config, overrides);
  ct_sections_check(root, config);
  const CtConfig ct = ct_config_read(root, config);
  const bool upcycled = std::any_of(ct.methods.begin(), ct.methods.end(), [](const CtMethod& m) {
    return m.kind == CtKind::Upcycle && m.upcycle.ders.on();
  });
  return upcycled || !ct.compress.empty();
}

struct CtCmdOptions {
  std::string config;
  ConfigOverrides overrides;
  CtOptions ct;
  bool no_report = false, report_only = false, no_plots = false;
};

// `study ct` and `study ders`: one runner; ders refuses a file without a DeRS method.
void study_ct_setup(CLI::App& cmd, Commands& c, bool ders) {
  auto o = std::make_shared<CtCmdOptions>();
  cmd.add_option("config", o->config, "experiment TOML with a [ct] section")->required();
  options_add_overrides(cmd, o->overrides);
  cmd.add_option("--seeds", o->ct.seeds, "seeds, e.g. 1,2,3 (default: [ct] seeds)")->delimiter(',');
  cmd.add_option("--methods", o->ct.methods,
                 ders ? "methods by name, e.g. vanilla,sm-0.9 (default: all)"
                      : "methods by name, e.g. full,lora (default: all)")
      ->delimiter(',');
  cmd.add_flag("--no-report", o->no_report, "train only");
  cmd.add_flag("--report-only", o->report_only, "write the report of the runs so far");
  cmd.add_flag("--no-plots", o->no_plots, "write the gnuplot scripts without running them");
  cmd.add_flag("--restart", o->ct.restart,
               "discard the runs of an earlier study in [run] dir first (one started under "
               "other settings is refused otherwise)");
  cmd.footer(
      "Exit status: 0 when every run finished and the report is written, 130 when interrupted "
      "(run the same command again to continue), 3 when some runs or their final measurements "
      "failed: the others went on, each failure is recorded (RUN/<method>/seed_<s>/failed.json) "
      "and listed in the report, whose statistics are over the runs that finished. 1: an error "
      "before or instead of training (bad input, or a folder holding a study started under "
      "other settings, settings.json).");
  c.add(&cmd, [o, ders] {
    o->ct.overrides = o->overrides.list();
    if (ders && !ct_file_has_ders(o->config, o->ct.overrides)) {
      fail(fmt::format(
          "{}: no DeRS method (a [[ct.methods]] entry of kind \"upcycle\" with a delta, or a "
          "[[ct.compress]] entry); 'moelab study ct' runs this file",
          o->config));
    }
    o->ct.report = !o->no_report;
    o->ct.plots = !o->no_plots;
    if (o->report_only) {
      std::printf("%s\n",
                  ct_report_write(ct_run_dir(o->config, o->ct.overrides), "", o->ct.plots).c_str());
      return 0;
    }
    return ct_run(o->config, o->ct);
  });
}

}  // namespace

void command_study(CLI::App& app, Commands& c) {
  CLI::App& study = command_group(
      app, "study", "the studies: forgetting, continual training, DeRS, sparsity sweeps; reports");
  study_forgetting_setup(*study.add_subcommand("forgetting", kForgettingAbout), c);
  study_ct_setup(*study.add_subcommand("ct", kCtAbout), c, false);
  study_ct_setup(*study.add_subcommand("ders", kDersAbout), c, true);
  command_study_sweep(*study.add_subcommand("sweep", kSweepAbout), c);
  study_report_setup(*study.add_subcommand("report", kReportAbout), c);
  study_view_setup(*study.add_subcommand("view", kViewAbout), c);
}

void command_study_renamed(CLI::App& app, Commands& c) {
  study_forgetting_setup(
      command_renamed(app, c, "run", "moelab study forgetting", kForgettingAbout), c);
  study_report_setup(command_renamed(app, c, "report", "moelab study report", kReportAbout), c);
  study_ct_setup(command_renamed(app, c, "ct", "moelab study ct", kCtAbout), c, false);
  CLI::App* sweep = app.add_subcommand("sweep", "IsoFLOP sweeps over sparsity");
  sweep->group("");
  sweep->require_subcommand(1);
  command_sweep_plan(command_renamed(*sweep, c, "plan", "moelab study sweep --plan",
                                     "the grid of runs: N, N_active, S, D, tokens per parameter, "
                                     "epochs, time"),
                     c);
  command_study_sweep(command_renamed(*sweep, c, "run", "moelab study sweep", kSweepAbout), c);
}

}  // namespace moelab
