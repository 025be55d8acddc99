// moelab fit: the law with held-out error and bootstrap intervals, the per-budget surfaces,
// the recommendation at a budget, fitted (the report, study/fit_report.cpp, prints, writes and
// draws them).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/rng.hpp"
#include "study/fit.hpp"
#include "study/fit_state.hpp"
#include "study/study_page.hpp"

namespace moelab {

namespace {

namespace fs = std::filesystem;

// ---- The law

// The runs at the largest S are held out for validation, where enough sparsities remain to
// identify the law's S terms: with three sparsities, holding one out leaves two for four
// coefficients (c', lambda, d', delta), and the law extrapolates to the held one without bound.
void split_holdout(FitState& st) {
  std::set<double> sparsities;
  for (const FitPoint& p : st.data.points) sparsities.insert(p.s);
  const double s_max = *sparsities.rbegin();
  bool hold = st.o.holdout && st.law == Law::sparsity && sparsities.size() > 1;
  if (hold && sparsities.size() < 4) {
    st.holdout_skipped = fmt::format(
        "{} sparsities: holding out the sparsest would leave {} to identify the law's S terms; "
        "the law is validated on the largest budget instead",
        sparsities.size(), sparsities.size() - 1);
    hold = false;
  }
  for (const FitPoint& p : st.data.points) (hold && p.s == s_max ? st.held : st.train).push_back(p);
}

// Resample the training points with replacement; refit from the best solution and a few grid
// starts (every 500th of the chinchilla grid; every 24th of the S-term starts).
void bootstrap(FitState& st) {
  std::vector<LawVec> starts = {st.best.p};
  std::vector<LawVec> grid = law_grid_chinchilla(false);
  for (size_t i = 0; i < grid.size(); i += 500) starts.push_back(grid[i]);
  if (st.law == Law::sparsity) {
    std::vector<LawVec> sp = law_sparsity_starts(st.best.p);
    for (size_t i = 0; i < sp.size(); i += 24) starts.push_back(sp[i]);
  }
  LawFitOptions lo;
  lo.law = st.law, lo.starts = starts;
  size_t n = st.train.size();
  for (int b = 0; b < st.o.bootstrap; b++) {
    std::vector<FitPoint> sample(n);
    for (size_t i = 0; i < n; i++)
      sample[i] = st.train[rng_u64(st.o.seed, 1000 + uint64_t(b), i) % n];
    st.boot.push_back(law_fit(sample, lo).p);
    if (st.o.budget)
      st.boot_rec.push_back(
          law_recommend(st.boot.back(), st.law, *st.o.budget, st.shared, st.n_lo, st.n_hi));
  }
}

// ---- The surfaces

void fit_budgets(FitState& st) {
  for (auto& [c, pts] : fit_group_budgets(st.data.points)) {
    FitState::Budget b;
    b.c = c, b.pts = pts;
    SurfaceDegrees deg =
        st.o.select_degrees ? surface_select(pts, st.o.splits, st.o.seed) : SurfaceDegrees{};
    b.surface = surface_fit(pts, deg);
    b.surface.heldout_mse = surface_heldout_mse(pts, b.surface.deg, st.o.splits, st.o.seed);
    size_t need = size_t(b.surface.deg.n + b.surface.deg.s + b.surface.deg.ns + 1);
    b.fitted = pts.size() > need;
    if (b.fitted) {  // the joint optimum within the observed N and S ranges
      const Surface& f = b.surface;
      auto at_s = [&](double s) { return surface_argmin_n(f, s, f.n_min, f.n_max); };
      double best = std::numeric_limits<double>::infinity();
      for (int i = 0; i <= 200; i++) {
        double s = f.s_min + (f.s_max - f.s_min) * i / 200, n = at_s(s);
        double l = surface_eval(f, n, s);
        if (l < best) best = l, b.opt_s = s, b.opt_n = n, b.opt_loss = l;
      }
    }
    st.budgets.push_back(std::move(b));
  }
}

// ---- The law beside the runs' optima

// Along one IsoFLOP curve the runs' tokens follow their N (D = C / f(N), f the exact FLOPs per
// token): ln D is fitted linearly in ln N over the curve's runs, and the law is minimised along
// that line, from a tenth of the smallest run's N to ten times the largest.
void law_along_curve(const LawVec& p, Law law, IsoflopCurve& c) {
  Line line = line_fit(c.log_n, c.log_d);
  if (!std::isfinite(line.slope)) {  // one width: D = C / (6 N) through it
    line = {-1.0, c.log_d.front() + c.log_n.front()};
  }
  const double slope = line.slope, icept = line.icept;
  c.law_d_icept = icept, c.law_d_slope = slope;
  const double lo = std::log(c.n_lo) - std::log(10.0), hi = std::log(c.n_hi) + std::log(10.0);
  double best = std::numeric_limits<double>::infinity(), best_x = lo;
  for (int i = 0; i <= 600; i++) {
    const double x = lo + (hi - lo) * i / 600;
    const double l = law_log_loss(p, law, std::exp(x), std::exp(icept + slope * x), c.sparsity);
    if (l < best) {
      best = l, best_x = x;
    }
  }
  c.law_n = std::exp(best_x);
  c.law_loss = std::exp(best);
  c.law_edge = c.law_n < c.n_lo ? Edge::lower : c.law_n > c.n_hi ? Edge::upper : Edge::interior;
}

// The law's optima on every curve of a budget, and its S* by the runs' procedure.
void law_along_budget(const LawVec& p, Law law, IsoflopBudget& b) {
  std::vector<double> sh, loss;
  for (IsoflopCurve& c : b.curves) {
    law_along_curve(p, law, c);
    sh.push_back(-std::log1p(-c.sparsity));
    loss.push_back(c.law_loss);
  }
  if (sh.size() >= 2) {
    const Vertex v = sparsity_optimum(sh, loss, sh.front(), sh.back());
    b.law_s = -std::expm1(-v.x);
    b.law_edge = v.edge;
  }
}

// The law refitted on the budgets below the largest, then tested on the largest: its error
// there, and where it puts that budget's optima.
void holdout_largest_budget(FitState& st) {
  if (st.iso.budgets.size() < 2) {
    return;
  }
  FitState::HeldBudget h;
  h.budget = st.iso.budgets.back().budget;
  std::vector<FitPoint> fit, held;
  for (const FitPoint& p : st.data.points) {
    (p.budget == h.budget ? held : fit).push_back(p);
  }
  if (int64_t(fit.size()) <= law_nparams(st.law)) {
    return;
  }
  const LawFit f = law_fit_default(fit, st.law, st.o.small_grid);
  h.fitted = int64_t(fit.size()), h.held = int64_t(held.size());
  h.error = law_error(f.p, st.law, held);
  h.law = st.iso.budgets.back();
  law_along_budget(f.p, st.law, h.law);
  st.held_budget = h;
}

}  // namespace

std::string fit_run(const FitOptions& o) {
  FitState st;
  st.o = o;
  st.data = fit_read_csv(o.csv, o.params);
  if (o.drop_highest > 0) {
    auto& v = st.data.points;
    if (size_t(o.drop_highest) >= v.size())
      fail(fmt::format("--drop-highest: {} of {} runs leaves none", o.drop_highest, v.size()));
    std::stable_sort(v.begin(), v.end(),
                     [](const FitPoint& a, const FitPoint& b) { return a.loss < b.loss; });
    v.resize(v.size() - size_t(o.drop_highest));
  }
  bool all_dense = std::all_of(st.data.points.begin(), st.data.points.end(),
                               [](const FitPoint& p) { return p.s == 0; });
  st.law = o.law.value_or(all_dense ? Law::chinchilla : Law::sparsity);
  if (st.law == Law::sparsity && all_dense)
    fail(fmt::format("{}: --law sparsity needs runs at more than one sparsity (every S is 0)",
                     o.csv));
  split_holdout(st);
  // As many runs as coefficients fit any of them exactly: the law says nothing then.
  if (int64_t(st.train.size()) <= law_nparams(st.law))
    fail(
        fmt::format("{}: the {} law has {} coefficients and {} runs to fit them{}: run a larger "
                    "sweep{}",
                    o.csv, law_name(st.law), law_nparams(st.law), st.train.size(),
                    st.held.empty() ? "" : fmt::format(" ({} held out)", st.held.size()),
                    st.law == Law::sparsity ? ", or --law chinchilla" : ""));
  st.shared = fit_shared_fraction(st.data, o.shared_fraction);
  st.n_lo = std::numeric_limits<double>::infinity();
  for (const FitPoint& p : st.data.points)
    st.n_lo = std::min(st.n_lo, p.n), st.n_hi = std::max(st.n_hi, p.n);
  // The recommendation's N: from a tenth of the smallest run to --max-params (or 100 times
  // the largest run: the law is extrapolated no further).
  st.n_lo /= 10, st.n_hi = o.max_params.value_or(100 * st.n_hi);
  auto t0 = std::chrono::steady_clock::now();
  st.best = law_fit_default(st.train, st.law, o.small_grid);
  st.fit_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.bootstrap > 0) bootstrap(st);
  if (o.budget) st.rec = law_recommend(st.best.p, st.law, *o.budget, st.shared, st.n_lo, st.n_hi);
  fit_budgets(st);
  st.iso = isoflop_analyze(st.data.points, o.isoflop_bootstrap, o.seed);
  for (IsoflopBudget& b : st.iso.budgets) {
    law_along_budget(st.best.p, st.law, b);
  }
  if (o.holdout) {
    holdout_largest_budget(st);
  }
  const nlohmann::ordered_json j = fit_state_json(st);
  fit_state_print(st, j);
  if (!o.out.empty()) {
    fs::create_directories(o.out);
    file_write_atomic((fs::path(o.out) / "fit.json").string(), j.dump(2) + "\n");
    fit_state_draw(st, o.out);
    // A sweep's fit into its folder's fit/: the sweep's page (written as it ran) shows it
    const fs::path sweep = fs::absolute(o.csv).parent_path();
    if (fs::absolute(o.out).lexically_normal() == (sweep / "fit").lexically_normal() &&
        fs::exists(sweep / "view.html")) {
      study_page_after_report(sweep.string(), "");
    }
  }
  return j.dump(2);
}

}  // namespace moelab
