// moelab fit: scaling laws from a sweep's results (study/fit.hpp).
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "study/fit.hpp"

namespace moelab {

namespace {

struct FitCmdOptions {
  FitOptions o;
  std::string law, params = "auto";
  double budget = 0, max_params = 0;
  bool no_holdout = false, holdout_max_s = false, no_plots = false;
};

}  // namespace

void command_fit(CLI::App& app, Commands& c) {
  auto o = std::make_shared<FitCmdOptions>();
  auto* cmd = app.add_subcommand("fit", "sparsity scaling laws fitted to a sweep's results");
  cmd->footer(
      "The CSV has a header; columns by name: params, tokens, loss (required); flops, "
      "active_params, sparsity, budget (else flops to 2 significant digits), seed, "
      "params_nonembed and active_params_nonembed (optional). "
      "The law L = A/N^alpha + B/D^beta + C/(1-S)^lambda + D'/((1-S)^delta N^gamma) + E is fitted "
      "by Huber(1e-3) on log L from a grid of starts (the chinchilla law: no S terms, the default "
      "when every S is 0); per budget a quadratic surface in log N and -log(1-S). With --budget "
      "the recommended S, N, N_active and D = C / (6 N_active), N_active = N (f + (1-f)(1-S)), f "
      "from the CSV's active_params or --shared-fraction. From the runs themselves: per budget and "
      "sparsity a parabola in ln N (N*, L*), per budget S* from a parabola of L* in -ln(1-S), "
      "with parametric bootstrap intervals; an optimum at the edge of the searched range is said "
      "so. With --holdout (the default) the law is also refitted without the largest budget and "
      "tested on it.");
  cmd->add_option("csv", o->o.csv, "results CSV")->required();
  cmd->add_option("--law", o->law, "sparsity or chinchilla (default: by the data)")
      ->check(CLI::IsMember({"sparsity", "chinchilla"}));
  cmd->add_option("--params", o->params,
                  "N in the fits: nonembed (no embedding, no output head; the default where the "
                  "CSV has params_nonembed), total, or auto")
      ->check(CLI::IsMember({"auto", "nonembed", "total"}))
      ->capture_default_str();
  cmd->add_option("--bootstrap", o->o.bootstrap, "bootstrap samples for the intervals (0: none)")
      ->capture_default_str();
  auto* h = cmd->add_flag("--holdout-max-s", o->holdout_max_s,
                          "hold out the runs at the largest S for validation (the default)");
  cmd->add_flag("--no-holdout", o->no_holdout, "fit on every run")->excludes(h);
  cmd->add_option("--out", o->o.out, "folder for fit.json and the figures");
  auto* b = cmd->add_option("--budget", o->budget, "recommend S, N, N_active, D at this C (FLOPs)");
  cmd->add_option("--max-params", o->max_params, "largest N the recommendation may take")->needs(b);
  cmd->add_option("--shared-fraction", o->o.shared_fraction,
                  "f in N_active = N (f + (1-f)(1-S)) when the CSV has no active_params")
      ->capture_default_str();
  cmd->add_flag("--select-degrees", o->o.select_degrees,
                "choose the surface's degrees in {0..3}^3 by held-out error");
  cmd->add_option("--splits", o->o.splits, "random 80/20 splits for the held-out MSE")
      ->capture_default_str();
  cmd->add_option("--drop-highest", o->o.drop_highest,
                  "drop the K runs of highest loss first (the Chinchilla replication drops 5)")
      ->capture_default_str();
  cmd->add_flag("--small-grid", o->o.small_grid, "180 chinchilla starts instead of 4,500");
  cmd->add_flag("--no-plots", o->no_plots, "write the gnuplot scripts, do not run gnuplot");
  c.add(cmd, [o] {
    if (!o->law.empty()) o->o.law = o->law == "chinchilla" ? Law::chinchilla : Law::sparsity;
    o->o.holdout = !o->no_holdout;
    o->o.params = o->params == "nonembed" ? ParamCount::nonembed
                  : o->params == "total"  ? ParamCount::total
                                          : ParamCount::automatic;
    o->o.plots = !o->no_plots;
    if (o->budget != 0) {
      if (!(o->budget > 0)) fail("--budget: must be positive");
      o->o.budget = o->budget;
    }
    if (o->max_params != 0) o->o.max_params = o->max_params;
    if (o->o.bootstrap < 0) fail("--bootstrap: must be >= 0");
    fit_run(o->o);
    return 0;
  });
}

}  // namespace moelab
