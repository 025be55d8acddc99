// The report of `moelab fit` (study/fit_run.cpp fits): the law with held-out error and bootstrap
// intervals, the per-budget surfaces, the recommendation at a budget; printed, written to
// OUT/fit.json, drawn.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "study/fit.hpp"
#include "study/fit_state.hpp"
#include "study/report_kit.hpp"
#include "study/stats.hpp"

namespace moelab {

namespace {

const char* kNames[kLawParams] = {"a",     "b",    "c",      "d",     "e",
                                  "alpha", "beta", "lambda", "delta", "gamma"};
constexpr std::array<int, 5> kChinchillaUsed = {kA, kB, kE, kAlpha, kBeta};

Interval boot_interval(const FitState& st, int k, bool exp_of) {
  std::vector<double> v;
  for (const LawVec& p : st.boot) v.push_back(exp_of ? std::exp(p[size_t(k)]) : p[size_t(k)]);
  return stat_percentiles(v);
}

// ---- Output

ojson law_json(const FitState& st) {
  ojson j;
  j["law"] = law_name(st.law);
  j["points"] = st.train.size();
  j["starts"] = st.best.starts;
  j["objective"] = st.best.objective;
  j["seconds"] = st.fit_seconds;
  ojson coef;
  for (int k = 0; k < kLawParams; k++) {
    if (st.law == Law::chinchilla &&
        std::find(kChinchillaUsed.begin(), kChinchillaUsed.end(), k) == kChinchillaUsed.end())
      continue;
    ojson c{{"value", st.best.p[size_t(k)]}};
    if (!st.boot.empty()) {
      Interval iv = boot_interval(st, k, false);
      c["ci95"] = {iv.lo, iv.hi};
    }
    if (k <= kE) c["exp"] = std::exp(st.best.p[size_t(k)]);  // A, B, C, D, E
    coef[kNames[k]] = c;
  }
  j["coefficients"] = coef;
  j["bootstrap"] = st.boot.size();
  return j;
}

ojson holdout_json(const FitState& st) {
  if (!st.holdout_skipped.empty()) return {{"skipped", st.holdout_skipped}};
  if (st.held.empty()) return nullptr;
  const LawError e = law_error(st.best.p, st.law, st.held);
  return {{"sparsity", st.held[0].s},
          {"points", st.held.size()},
          {"rmse_log_loss", e.rmse_log_loss},
          {"mean_abs_rel_error", e.mean_abs_rel_error}};
}

ojson rec_json(const Recommendation& r) {
  return {{"sparsity", r.s},
          {"params", r.n},
          {"active_params", r.n_active},
          {"tokens", r.d},
          {"loss", r.loss}};
}

ojson interval_json(const Interval& iv) {
  if (!std::isfinite(iv.lo) || !std::isfinite(iv.hi)) return nullptr;
  return {iv.lo, iv.hi};
}

ojson finite(double v) {
  return std::isfinite(v) ? ojson(v) : ojson();
}

ojson curve_json(const IsoflopCurve& c) {
  ojson j{{"sparsity", c.sparsity}, {"runs", c.loss.size()}, {"params_range", {c.n_lo, c.n_hi}}};
  if (c.fitted) {
    j["parabola"] = {c.fit.c2, c.fit.c1, c.fit.c0};
    j["optimal_params"] = std::exp(c.best.x);
    j["optimal_params_ci95"] = interval_json(c.n_ci);
    j["optimal_loss"] = c.best.y;
    j["optimal_loss_ci95"] = interval_json(c.loss_ci);
    j["edge"] = edge_name(c.best.edge);
    j["loss_minus_least_sparse"] = finite(c.gain);
    j["loss_minus_least_sparse_ci95"] = interval_json(c.gain_ci);
  }
  j["law_optimal_params"] = finite(c.law_n);
  j["law_optimal_loss"] = finite(c.law_loss);
  j["law_edge"] = edge_name(c.law_edge);
  return j;
}

ojson isoflop_budget_json(const IsoflopBudget& b) {
  ojson j{{"budget", b.budget}, {"sparsity_range", {b.s_lo, b.s_hi}}};
  ojson curves = ojson::array();
  for (const IsoflopCurve& c : b.curves) curves.push_back(curve_json(c));
  j["curves"] = curves;
  if (b.fitted) {
    j["optimal_sparsity"] = b.s_star;
    j["optimal_sparsity_ci95"] = interval_json(b.s_ci);
    j["edge"] = edge_name(b.best.edge);
    j["edge_share"] = finite(b.s_edge_share);
  }
  j["law_optimal_sparsity"] = finite(b.law_s);
  j["law_edge"] = edge_name(b.law_edge);
  return j;
}

ojson isoflop_json(const FitState& st) {
  const IsoflopAnalysis& a = st.iso;
  ojson j;
  j["noise"] = {{"residual_sd", finite(a.residual_sd)},
                {"residual_dof", a.residual_dof},
                {"seed_sd", finite(a.seed_sd)},
                {"seed_groups", a.seed_groups},
                {"seed_dof", a.seed_dof},
                {"bootstrap_sd", finite(a.noise)}};
  j["bootstrap"] = a.bootstrap;
  ojson budgets = ojson::array();
  for (const IsoflopBudget& b : a.budgets) budgets.push_back(isoflop_budget_json(b));
  j["budgets"] = budgets;
  j["optimal_sparsity_slope"] = {{"per_decade", finite(a.slope)},
                                 {"ci95", interval_json(a.slope_ci)},
                                 {"positive_share", finite(a.slope_positive)}};
  return j;
}

ojson held_budget_json(const FitState& st) {
  if (!st.held_budget) return nullptr;
  const FitState::HeldBudget& h = *st.held_budget;
  ojson curves = ojson::array();
  for (const IsoflopCurve& c : h.law.curves)
    curves.push_back({{"sparsity", c.sparsity},
                      {"law_optimal_params", finite(c.law_n)},
                      {"law_optimal_loss", finite(c.law_loss)}});
  return {{"budget", h.budget},
          {"fitted_runs", h.fitted},
          {"held_runs", h.held},
          {"rmse_log_loss", h.error.rmse_log_loss},
          {"mean_abs_rel_error", h.error.mean_abs_rel_error},
          {"law_optimal_sparsity", finite(h.law.law_s)},
          {"law_edge", edge_name(h.law.law_edge)},
          {"curves", curves}};
}

// ---- Figures

// Loss against S per budget: each curve's L* read from the runs (interval: the bootstrap's),
// the best single run, and the law's optimum along the same curve.
void draw_loss_vs_s(const FitState& st, Figures& figures) {
  PlotChart c{
      "optimal loss against sparsity per budget: from the runs (points, 95% band), best "
      "run (crosses), law (dashed)",
      "sparsity S", "loss"};
  int color = 0;
  for (size_t k = 0; k < st.iso.budgets.size(); k++) {
    const IsoflopBudget& b = st.iso.budgets[k];
    PlotSeries runs{fmt::format("L*, C = {:.2g}", b.budget)}, best{""};
    PlotSeries law{fmt::format("law, C = {:.2g}", b.budget)};
    runs.points = best.points = true;
    runs.color = best.color = law.color = color++;
    best.dash = 3, law.dash = 2;
    for (const IsoflopCurve& cv : b.curves) {
      best.x.push_back(cv.sparsity);
      best.y.push_back(*std::min_element(cv.loss.begin(), cv.loss.end()));
      law.x.push_back(cv.sparsity);
      law.y.push_back(cv.law_loss);
      if (cv.fitted) {
        runs.x.push_back(cv.sparsity);
        runs.y.push_back(cv.best.y);
        runs.lo.push_back(std::isfinite(cv.loss_ci.lo) ? cv.loss_ci.lo : cv.best.y);
        runs.hi.push_back(std::isfinite(cv.loss_ci.hi) ? cv.loss_ci.hi : cv.best.y);
      }
    }
    if (!runs.x.empty()) {
      c.series.push_back(runs);
    }
    c.series.push_back(best);
    c.series.push_back(law);
  }
  if (!c.series.empty()) figures.draw(c, "fit_loss_vs_s");
}

// IsoFLOP curves per budget: the runs, each sparsity's parabola in ln N over the searched range
// with its minimum, the law along the same line (dashed, beyond the runs where its optimum
// lies), and the searched range's ends (dotted verticals).
void draw_isoflops(const FitState& st, Figures& figures) {
  const char* n_name = st.data.nonembed ? "non-embedding parameters" : "total parameters";
  for (size_t k = 0; k < st.iso.budgets.size(); k++) {
    const IsoflopBudget& b = st.iso.budgets[k];
    PlotChart c{fmt::format("IsoFLOP curves at C = {:.2g}: runs (points), parabolas (solid, "
                            "searched range), law (dashed)",
                            b.budget),
                fmt::format("log10 N ({})", n_name), "loss"};
    double lo = INFINITY, hi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    int color = 0;
    for (const IsoflopCurve& cv : b.curves) {
      PlotSeries obs{fmt::format("S = {:.3g}", cv.sparsity)}, fit{""}, law{""};
      obs.scatter = true;
      obs.color = fit.color = law.color = color++;
      law.dash = 2;
      std::vector<size_t> order(cv.log_n.size());
      for (size_t i = 0; i < order.size(); i++) order[i] = i;
      std::sort(order.begin(), order.end(),
                [&](size_t x, size_t y) { return cv.log_n[x] < cv.log_n[y]; });
      for (size_t i : order) {
        obs.x.push_back(cv.log_n[i] / std::log(10.0));
        obs.y.push_back(cv.loss[i]);
        ylo = std::min(ylo, cv.loss[i]), yhi = std::max(yhi, cv.loss[i]);
      }
      lo = std::min(lo, std::log10(cv.n_lo)), hi = std::max(hi, std::log10(cv.n_hi));
      c.series.push_back(obs);
      if (!cv.fitted) {
        continue;
      }
      for (int i = 0; i <= 40; i++) {
        const double x = std::log(cv.n_lo) + (std::log(cv.n_hi) - std::log(cv.n_lo)) * i / 40;
        fit.x.push_back(x / std::log(10.0));
        fit.y.push_back(parabola_eval(cv.fit, x));
      }
      c.series.push_back(fit);
      if (std::isfinite(cv.law_d_slope)) {  // the law along the runs' line, to its optimum
        const double from = std::log(std::min(cv.n_lo, cv.law_n));
        const double to = std::log(std::max(cv.n_hi, cv.law_n));
        for (int i = 0; i <= 40; i++) {
          const double x = from + (to - from) * i / 40;
          const double d = std::exp(cv.law_d_icept + cv.law_d_slope * x);
          law.x.push_back(x / std::log(10.0));
          law.y.push_back(std::exp(law_log_loss(st.best.p, st.law, std::exp(x), d, cv.sparsity)));
        }
        c.series.push_back(law);
      }
      PlotSeries vertex{""};
      vertex.points = true, vertex.color = fit.color, vertex.dash = 3;
      vertex.x = {cv.best.x / std::log(10.0)}, vertex.y = {cv.best.y};
      c.series.push_back(vertex);
    }
    for (double x : {lo, hi}) {
      PlotSeries edge{x == lo ? "searched range" : ""};
      edge.dash = 3, edge.color = 7;
      edge.x = {x, x}, edge.y = {ylo, yhi};
      c.series.push_back(edge);
    }
    figures.draw(c, fmt::format("fit_isoflop_{}", k));
  }
}

// Fitted against observed loss; held-out runs apart; the diagonal.
void draw_observed(const FitState& st, Figures& figures) {
  PlotChart c{"fitted law against observed loss", "observed loss", "fitted loss"};
  PlotSeries tr{"fitted runs"}, ho{"held out"}, diag{"y = x"};
  ho.color = 1, diag.color = 2, diag.dash = 3;
  auto add = [&](PlotSeries& s, const std::vector<FitPoint>& pts) {
    std::vector<const FitPoint*> v;
    for (const FitPoint& p : pts) v.push_back(&p);
    std::sort(v.begin(), v.end(), [](auto* x, auto* y) { return x->loss < y->loss; });
    for (auto* p : v)
      s.x.push_back(p->loss),
          s.y.push_back(std::exp(law_log_loss(st.best.p, st.law, p->n, p->d, p->s)));
  };
  add(tr, st.train), add(ho, st.held);
  double lo = tr.x.front(), hi = tr.x.back();
  for (double x : ho.x) lo = std::min(lo, x), hi = std::max(hi, x);
  diag.x = diag.y = {lo, hi};
  tr.points = ho.points = true;
  c.series.push_back(tr);
  if (!ho.x.empty()) c.series.push_back(ho);
  c.series.push_back(diag);
  figures.draw(c, "fit_observed");
}

// S* against the budget: read from the runs (95% band), the law's by the same procedure, and the
// searched sparsities' range (dotted): an S* on a dotted line is at the edge of the search.
void draw_optimal_s(const FitState& st, Figures& figures) {
  PlotChart c{
      "optimal sparsity against budget: runs (points, 95% band), law (dashed); dotted: "
      "the searched range",
      "log10 C (FLOPs)", "S*"};
  PlotSeries runs{"S* from the runs"}, law{"S* of the law"}, lo_edge{"searched range"}, hi_edge{""};
  runs.points = law.points = true;
  law.color = 1, law.dash = 2;
  lo_edge.color = hi_edge.color = 7, lo_edge.dash = hi_edge.dash = 3;
  for (const IsoflopBudget& b : st.iso.budgets) {
    const double x = std::log10(b.budget);
    lo_edge.x.push_back(x), lo_edge.y.push_back(b.s_lo);
    hi_edge.x.push_back(x), hi_edge.y.push_back(b.s_hi);
    if (b.fitted) {
      runs.x.push_back(x), runs.y.push_back(b.s_star);
      runs.lo.push_back(std::isfinite(b.s_ci.lo) ? b.s_ci.lo : b.s_star);
      runs.hi.push_back(std::isfinite(b.s_ci.hi) ? b.s_ci.hi : b.s_star);
    }
    if (std::isfinite(b.law_s)) {
      law.x.push_back(x), law.y.push_back(b.law_s);
    }
  }
  if (runs.x.empty() && law.x.empty()) {
    return;
  }
  for (PlotSeries* p : {&runs, &law, &lo_edge, &hi_edge}) {
    if (!p->x.empty()) c.series.push_back(*p);
  }
  c.ymin = -0.05, c.ymax = 1.0;
  figures.draw(c, "fit_optimal_s");
}

std::string ci_text(const Interval& iv, const char* spec) {
  if (!std::isfinite(iv.lo)) return "";
  return fmt::format(fmt::runtime(std::string(" [{:") + spec + "}, {:" + spec + "}]"), iv.lo,
                     iv.hi);
}

std::string edge_text(Edge e) {
  return e == Edge::interior ? "" : fmt::format(" ({})", edge_name(e));
}

void isoflop_print(const FitState& st) {
  const IsoflopAnalysis& a = st.iso;
  std::printf(
      "optima from the runs: a parabola in ln N per budget and sparsity, S* by a parabola "
      "of L* in -ln(1-S); %lld bootstrap samples, noise sd %.4g (residuals %.4g on %lld "
      "dof, seeds %.4g on %lld dof)\n",
      (long long)a.bootstrap, a.noise, a.residual_sd, (long long)a.residual_dof, a.seed_sd,
      (long long)a.seed_dof);
  for (const IsoflopBudget& b : a.budgets) {
    for (const IsoflopCurve& c : b.curves) {
      if (!c.fitted) {
        std::printf("  C %-8.3g S %-6.3g fewer than 3 widths: no optimum\n", b.budget, c.sparsity);
        continue;
      }
      const std::string gain =
          &c == &b.curves.front() || !std::isfinite(c.gain)
              ? ""
              : fmt::format(" ({:+.4f}{} vs S = {:g})", c.gain, ci_text(c.gain_ci, "+.4f"),
                            b.curves.front().sparsity);
      std::printf("  C %-8.3g S %-6.3g N* %.4g%s L* %.4f%s%s%s | law: N* %.4g L* %.4f%s\n",
                  b.budget, c.sparsity, std::exp(c.best.x), ci_text(c.n_ci, ".3g").c_str(),
                  c.best.y, ci_text(c.loss_ci, ".4f").c_str(), gain.c_str(),
                  edge_text(c.best.edge).c_str(), c.law_n, c.law_loss,
                  edge_text(c.law_edge).c_str());
    }
    if (b.fitted)
      std::printf("  C %-8.3g S* %.3f%s%s, at an edge in %.0f%% of samples | law: S* %.3f%s\n",
                  b.budget, b.s_star, ci_text(b.s_ci, ".3f").c_str(),
                  edge_text(b.best.edge).c_str(), 100 * b.s_edge_share, b.law_s,
                  edge_text(b.law_edge).c_str());
  }
  if (std::isfinite(a.slope))
    std::printf("S* against log10 C: %+.3f per decade%s, positive in %.0f%% of samples\n", a.slope,
                ci_text(a.slope_ci, "+.3f").c_str(), 100 * a.slope_positive);
  if (st.held_budget) {
    const auto& h = *st.held_budget;
    std::printf(
        "law fitted without C = %.3g (%lld runs), tested on its %lld runs: RMSE of log L "
        "%.4g, mean |rel. error| %.4g; its S* there %.3f%s (runs: %.3f)\n",
        h.budget, (long long)h.fitted, (long long)h.held, h.error.rmse_log_loss,
        h.error.mean_abs_rel_error, h.law.law_s, edge_text(h.law.law_edge).c_str(),
        a.budgets.back().s_star);
  }
}

}  // namespace

ojson fit_state_json(const FitState& st) {
  ojson j;
  j["csv"] = st.data.path;
  j["params"] = st.data.nonembed ? "non-embedding (no input embedding, no output head)"
                                 : "total (every parameter)";
  j["fit"] = law_json(st);
  j["holdout"] = holdout_json(st);
  j["holdout_budget"] = held_budget_json(st);
  j["isoflop"] = isoflop_json(st);
  ojson budgets = ojson::array();
  for (const auto& b : st.budgets) {
    if (!b.fitted) continue;
    const Surface& f = b.surface;
    budgets.push_back(
        {{"budget", b.c},
         {"points", b.pts.size()},
         {"degrees", {f.deg.n, f.deg.s, f.deg.ns}},
         {"coefficients", f.coef},
         {"heldout_mse", std::isfinite(f.heldout_mse) ? ojson(f.heldout_mse) : ojson()},
         {"optimal_sparsity", b.opt_s},
         {"optimal_params", b.opt_n},
         {"optimal_loss", b.opt_loss}});
  }
  j["budgets"] = budgets;
  if (st.rec) {
    ojson r = rec_json(*st.rec);
    r["budget"] = *st.o.budget;
    r["shared_fraction"] = st.shared;
    r["params_range"] = {st.n_lo, st.n_hi};
    // The recommendation searches S in [0, 0.99] and N in params_range: an optimum on either
    // search's limit is the limit, not an optimum.
    auto edge = [](double v, double lo, double hi) {
      return edge_name(v <= lo * (1 + 1e-6)   ? Edge::lower
                       : v >= hi * (1 - 1e-6) ? Edge::upper
                                              : Edge::interior);
    };
    r["sparsity_range"] = {0.0, 0.99};
    r["sparsity_edge"] = st.rec->s <= 1e-9 ? edge_name(Edge::lower) : edge(st.rec->s, 0, 0.99);
    r["params_edge"] = edge(st.rec->n, st.n_lo, st.n_hi);
    if (!st.boot_rec.empty()) {
      auto iv = [&](auto get) {
        std::vector<double> v;
        for (const auto& x : st.boot_rec) v.push_back(get(x));
        Interval i = stat_percentiles(v);
        return ojson{i.lo, i.hi};
      };
      r["ci95"] = {{"sparsity", iv([](const Recommendation& x) { return x.s; })},
                   {"params", iv([](const Recommendation& x) { return x.n; })},
                   {"active_params", iv([](const Recommendation& x) { return x.n_active; })},
                   {"tokens", iv([](const Recommendation& x) { return x.d; })}};
    }
    j["recommendation"] = r;
  }
  return j;
}

void fit_state_print(const FitState& st, const ojson& j) {
  std::printf("%s law on %zu runs of %s (%d starts, %.1f s, objective %.6g); N: %s\n",
              law_name(st.law), st.train.size(), st.data.path.c_str(), st.best.starts,
              st.fit_seconds, st.best.objective, j["params"].get<std::string>().c_str());
  for (auto& [name, c] : j["fit"]["coefficients"].items()) {
    std::string line = fmt::format("  {:<7}{:>10.4f}", name, c["value"].get<double>());
    if (c.contains("ci95"))
      line +=
          fmt::format("  [{:.4f}, {:.4f}]", c["ci95"][0].get<double>(), c["ci95"][1].get<double>());
    if (c.contains("exp")) line += fmt::format("  exp: {:.4g}", c["exp"].get<double>());
    std::printf("%s\n", line.c_str());
  }
  if (!st.holdout_skipped.empty())
    std::printf("no sparsity held out: %s\n", st.holdout_skipped.c_str());
  else if (!j["holdout"].is_null())
    std::printf("held out: %zu runs at S = %g: RMSE of log L %.4g, mean |rel. error| %.4g\n",
                st.held.size(), st.held[0].s, j["holdout"]["rmse_log_loss"].get<double>(),
                j["holdout"]["mean_abs_rel_error"].get<double>());
  for (const auto& b : j["budgets"])
    std::printf(
        "budget %.3g: %zu runs, surface degrees (%d,%d,%d), held-out MSE %s, optimum S "
        "%.3f N %.4g (loss %.4f)\n",
        b["budget"].get<double>(), b["points"].get<size_t>(), b["degrees"][0].get<int>(),
        b["degrees"][1].get<int>(), b["degrees"][2].get<int>(),
        b["heldout_mse"].is_null() ? "n/a"
                                   : fmt::format("{:.3g}", b["heldout_mse"].get<double>()).c_str(),
        b["optimal_sparsity"].get<double>(), b["optimal_params"].get<double>(),
        b["optimal_loss"].get<double>());
  isoflop_print(st);
  if (st.rec)
    std::printf(
        "at C = %.3g: S %.3f (%s of [0, 0.99]), N %.4g (%s of the range searched), "
        "N_active %.4g, D %.4g (loss %.4f)\n",
        *st.o.budget, st.rec->s, j["recommendation"]["sparsity_edge"].get<std::string>().c_str(),
        st.rec->n, j["recommendation"]["params_edge"].get<std::string>().c_str(), st.rec->n_active,
        st.rec->d, st.rec->loss);
}

void fit_state_draw(const FitState& st, const std::string& out) {
  Figures figures{out, st.o.plots, {}};
  draw_loss_vs_s(st, figures);
  draw_isoflops(st, figures);
  draw_observed(st, figures);
  draw_optimal_s(st, figures);
}

}  // namespace moelab
