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
  if (st.held.empty()) return nullptr;
  double se = 0, rel = 0;
  for (const FitPoint& p : st.held) {
    double r = law_log_loss(st.best.p, st.law, p.n, p.d, p.s) - std::log(p.loss);
    se += r * r, rel += std::abs(std::expm1(r));
  }
  double n = double(st.held.size());
  return {{"sparsity", st.held[0].s},
          {"points", st.held.size()},
          {"rmse_log_loss", std::sqrt(se / n)},
          {"mean_abs_rel_error", rel / n}};
}

ojson rec_json(const Recommendation& r) {
  return {{"sparsity", r.s},
          {"params", r.n},
          {"active_params", r.n_active},
          {"tokens", r.d},
          {"loss", r.loss}};
}

// ---- Figures

// The surface's range of N in `steps` steps even in log N: (log10 N, N) per point.
std::vector<std::pair<double, double>> log_grid(const Surface& f, int steps) {
  std::vector<std::pair<double, double>> grid;
  for (int i = 0; i <= steps; i++) {
    const double ln = std::log(f.n_min) + (std::log(f.n_max) - std::log(f.n_min)) * i / steps;
    grid.push_back({ln / std::log(10.0), std::exp(ln)});
  }
  return grid;
}

// Loss against S per budget: the best observed loss at each S and the law's IsoFLOP optimum.
void draw_loss_vs_s(const FitState& st, Figures& figures) {
  PlotChart c{"final loss against sparsity per budget: best run (points), fitted law (line)",
              "sparsity S", "loss"};
  int color = 0;
  for (const auto& b : st.budgets) {
    std::map<double, double> best;
    for (const FitPoint& p : b.pts)
      best[p.s] = best.count(p.s) ? std::min(best[p.s], p.loss) : p.loss;
    if (best.size() < 2) continue;
    PlotSeries obs{fmt::format("C = {:.2g}", b.c)}, law{fmt::format("law, C = {:.2g}", b.c)};
    obs.points = true, obs.color = law.color = color++, law.dash = 2;
    for (auto [s, l] : best) obs.x.push_back(s), obs.y.push_back(l);
    for (int i = 0; i <= 50; i++) {
      double s = best.rbegin()->first * i / 50;
      law.x.push_back(s);
      law.y.push_back(law_best_n(st.best.p, st.law, b.c, s, st.shared, st.n_lo, st.n_hi).loss);
    }
    c.series.push_back(obs), c.series.push_back(law);
  }
  if (!c.series.empty()) figures.draw(c, "fit_loss_vs_s");
}

// IsoFLOP curves per budget: loss against log10 N per S, runs and the surface.
void draw_isoflops(const FitState& st, Figures& figures) {
  int k = 0;
  for (const auto& b : st.budgets) {
    if (!b.fitted) continue;
    PlotChart c{fmt::format("IsoFLOP curves at C = {:.2g}: runs (points), surface (dashed)", b.c),
                "log10 N (total parameters)", "loss"};
    std::map<double, std::vector<const FitPoint*>> by_s;
    for (const FitPoint& p : b.pts) by_s[p.s].push_back(&p);
    int color = 0;
    for (auto& [s, v] : by_s) {
      std::sort(v.begin(), v.end(), [](auto* x, auto* y) { return x->n < y->n; });
      PlotSeries obs{fmt::format("S = {:.3g}", s)}, fit{""};
      obs.points = true, obs.color = fit.color = color++, fit.dash = 2;
      for (auto* p : v) obs.x.push_back(std::log10(p->n)), obs.y.push_back(p->loss);
      for (const auto& [log10_n, n] : log_grid(b.surface, 40)) {
        fit.x.push_back(log10_n);
        fit.y.push_back(surface_eval(b.surface, n, s));
      }
      c.series.push_back(obs), c.series.push_back(fit);
    }
    figures.draw(c, fmt::format("fit_isoflop_{}", k++));
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

// The surfaces' S*(N) per budget, S in [0, 0.99].
void draw_optimal_s(const FitState& st, Figures& figures) {
  PlotChart c{"optimal sparsity against total parameters (per-budget surface)",
              "log10 N (total parameters)", "S*"};
  int color = 0;
  for (const auto& b : st.budgets) {
    if (!b.fitted || b.surface.s_max == b.surface.s_min) continue;
    PlotSeries s{fmt::format("C = {:.2g}", b.c)};
    s.color = color++;
    for (const auto& [log10_n, n] : log_grid(b.surface, 40)) {
      s.x.push_back(log10_n);
      s.y.push_back(surface_argmin_s(b.surface, n, 0, 0.99));
    }
    c.series.push_back(s);
  }
  if (!c.series.empty()) figures.draw(c, "fit_optimal_s");
}

}  // namespace

ojson fit_state_json(const FitState& st) {
  ojson j;
  j["csv"] = st.data.path;
  j["fit"] = law_json(st);
  j["holdout"] = holdout_json(st);
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
  std::printf("%s law on %zu runs of %s (%d starts, %.1f s, objective %.6g)\n", law_name(st.law),
              st.train.size(), st.data.path.c_str(), st.best.starts, st.fit_seconds,
              st.best.objective);
  for (auto& [name, c] : j["fit"]["coefficients"].items()) {
    std::string line = fmt::format("  {:<7}{:>10.4f}", name, c["value"].get<double>());
    if (c.contains("ci95"))
      line +=
          fmt::format("  [{:.4f}, {:.4f}]", c["ci95"][0].get<double>(), c["ci95"][1].get<double>());
    if (c.contains("exp")) line += fmt::format("  exp: {:.4g}", c["exp"].get<double>());
    std::printf("%s\n", line.c_str());
  }
  if (!j["holdout"].is_null())
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
  if (st.rec)
    std::printf("at C = %.3g: S %.3f, N %.4g, N_active %.4g, D %.4g (loss %.4f)\n", *st.o.budget,
                st.rec->s, st.rec->n, st.rec->n_active, st.rec->d, st.rec->loss);
}

void fit_state_draw(const FitState& st, const std::string& out) {
  Figures figures{out, st.o.plots, {}};
  draw_loss_vs_s(st, figures);
  draw_isoflops(st, figures);
  draw_observed(st, figures);
  draw_optimal_s(st, figures);
}

}  // namespace moelab
