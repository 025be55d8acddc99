#include "study/isoflop.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moelab {

const char* edge_name(Edge e) {
  switch (e) {
    case Edge::interior:
      return "interior";
    case Edge::lower:
      return "at the lower edge";
    case Edge::upper:
      return "at the upper edge";
  }
  return "?";
}

Parabola parabola_fit(std::span<const double> x, std::span<const double> y) {
  check(x.size() == y.size() && x.size() >= 3, "parabola_fit: needs 3 points or more");
  // Centred (u = x - m) so that ln N ~ 12 does not cost the normal equations their precision.
  double m = 0;
  for (double v : x) m += v;
  m /= double(x.size());
  double s[5] = {0, 0, 0, 0, 0}, t[3] = {0, 0, 0};  // sums of u^k, and of y u^k
  for (size_t i = 0; i < x.size(); i++) {
    const double u = x[i] - m;
    double uk = 1;
    for (int k = 0; k < 5; k++) {
      s[k] += uk;
      if (k < 3) t[k] += y[i] * uk;
      uk *= u;
    }
  }
  // [s0 s1 s2; s1 s2 s3; s2 s3 s4] (b0, b1, b2) = t, by Cramer's rule.
  auto det3 = [](double a, double b, double c, double d, double e, double f, double g, double h,
                 double k) {
    return a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g);
  };
  const double det = det3(s[0], s[1], s[2], s[1], s[2], s[3], s[2], s[3], s[4]);
  check(std::abs(det) > 0, "parabola_fit: needs 3 distinct x");
  const double b0 = det3(t[0], s[1], s[2], t[1], s[2], s[3], t[2], s[3], s[4]) / det;
  const double b1 = det3(s[0], t[0], s[2], s[1], t[1], s[3], s[2], t[2], s[4]) / det;
  const double b2 = det3(s[0], s[1], t[0], s[1], s[2], t[1], s[2], s[3], t[2]) / det;
  Parabola p;
  p.c2 = b2;
  p.c1 = b1 - 2 * b2 * m;
  p.c0 = b2 * m * m - b1 * m + b0;
  return p;
}

Line line_fit(std::span<const double> x, std::span<const double> y) {
  check(x.size() == y.size(), "line_fit: x and y differ in length");
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  const double n = double(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    sx += x[i], sy += y[i], sxx += x[i] * x[i], sxy += x[i] * y[i];
  }
  const double den = n * sxx - sx * sx;
  Line l;
  if (n >= 2 && den > 0) {
    l.slope = (n * sxy - sx * sy) / den;
    l.icept = (sy - l.slope * sx) / n;
  }
  return l;
}

double parabola_eval(const Parabola& p, double x) {
  return (p.c2 * x + p.c1) * x + p.c0;
}

Vertex parabola_min(const Parabola& p, double lo, double hi) {
  Vertex v;
  if (p.c2 > 0) {
    const double x = -p.c1 / (2 * p.c2);
    if (x > lo && x < hi) {
      v.x = x, v.y = parabola_eval(p, x), v.edge = Edge::interior;
      return v;
    }
  }
  const double ylo = parabola_eval(p, lo), yhi = parabola_eval(p, hi);
  if (ylo <= yhi) {
    v.x = lo, v.y = ylo, v.edge = Edge::lower;
  } else {
    v.x = hi, v.y = yhi, v.edge = Edge::upper;
  }
  return v;
}

Vertex sparsity_optimum(std::span<const double> sh, std::span<const double> loss, double sh_lo,
                        double sh_hi) {
  check(sh.size() == loss.size() && sh.size() >= 2, "sparsity_optimum: needs 2 sparsities");
  if (sh.size() >= 3) {
    return parabola_min(parabola_fit(sh, loss), sh_lo, sh_hi);
  }
  Vertex v;
  const bool first = loss[0] <= loss[1];
  v.x = first ? sh[0] : sh[1];
  v.y = std::min(loss[0], loss[1]);
  v.edge = first ? Edge::lower : Edge::upper;
  return v;
}

namespace {

size_t distinct(const std::vector<double>& v) {
  return std::set<double>(v.begin(), v.end()).size();
}

// The curves' parabolas and vertices, each budget's S*, from the losses in `loss` (one per point
// of the curves, in order).
void analysis_solve(IsoflopAnalysis& a) {
  for (IsoflopBudget& b : a.budgets) {
    std::vector<double> sh, lstar;
    for (IsoflopCurve& c : b.curves) {
      c.fitted = distinct(c.log_n) >= 3;
      if (!c.fitted) {
        continue;
      }
      c.fit = parabola_fit(c.log_n, c.loss);
      c.best = parabola_min(c.fit, std::log(c.n_lo), std::log(c.n_hi));
      sh.push_back(-std::log1p(-c.sparsity));
      lstar.push_back(c.best.y);
    }
    const IsoflopCurve& first = b.curves.front();
    for (IsoflopCurve& c : b.curves) {
      c.gain = c.fitted && first.fitted ? c.best.y - first.best.y : NAN;
    }
    b.fitted = sh.size() >= 2;
    if (!b.fitted) {
      continue;
    }
    if (sh.size() >= 3) {
      b.fit = parabola_fit(sh, lstar);
    }
    b.best = sparsity_optimum(sh, lstar, sh.front(), sh.back());  // the S with an L*
    b.s_star = -std::expm1(-b.best.x);
  }
}

// Least-squares slope of S* against log10 C over the budgets with an S*.
double s_star_slope(const IsoflopAnalysis& a) {
  std::vector<double> x, y;
  for (const IsoflopBudget& b : a.budgets) {
    if (b.fitted) {
      x.push_back(std::log10(b.budget));
      y.push_back(b.s_star);
    }
  }
  return line_fit(x, y).slope;
}

void noise_estimate(IsoflopAnalysis& a, std::span<const FitPoint> pts) {
  double rss = 0;
  int64_t dof = 0;
  for (const IsoflopBudget& b : a.budgets) {
    for (const IsoflopCurve& c : b.curves) {
      if (!c.fitted) {
        continue;
      }
      for (size_t i = 0; i < c.log_n.size(); i++) {
        const double r = c.loss[i] - parabola_eval(c.fit, c.log_n[i]);
        rss += r * r;
      }
      dof += int64_t(c.log_n.size()) - 3;
    }
  }
  a.residual_dof = dof;
  a.residual_sd = dof > 0 ? std::sqrt(rss / double(dof)) : NAN;
  // Runs that differ only in their seed.
  std::map<std::tuple<double, double, double>, std::vector<double>> groups;
  for (const FitPoint& p : pts) groups[{p.budget, p.s, p.n}].push_back(p.loss);
  double ss = 0;
  for (const auto& [key, v] : groups) {
    if (v.size() < 2) {
      continue;
    }
    double mean = 0;
    for (double x : v) mean += x;
    mean /= double(v.size());
    for (double x : v) ss += (x - mean) * (x - mean);
    a.seed_groups++;
    a.seed_dof += int64_t(v.size()) - 1;
  }
  a.seed_sd = a.seed_dof > 0 ? std::sqrt(ss / double(a.seed_dof)) : NAN;
  a.noise = std::max(std::isfinite(a.residual_sd) ? a.residual_sd : 0.0,
                     std::isfinite(a.seed_sd) ? a.seed_sd : 0.0);
}

// Parametric bootstrap: each curve's fitted losses plus Gaussian noise, every optimum refitted.
void bootstrap_intervals(IsoflopAnalysis& a, int64_t samples, uint64_t seed) {
  a.bootstrap = a.noise > 0 ? samples : 0;
  if (a.bootstrap == 0) {
    return;
  }
  const size_t nb = a.budgets.size();
  std::vector<std::vector<std::vector<double>>> n_star(nb), l_star(nb), gains(nb);
  std::vector<std::vector<double>> s_star(nb);
  std::vector<int64_t> s_edges(nb, 0);
  std::vector<double> slopes;
  int64_t positive = 0;
  for (size_t b = 0; b < nb; b++) {
    n_star[b].resize(a.budgets[b].curves.size());
    l_star[b].resize(a.budgets[b].curves.size());
    gains[b].resize(a.budgets[b].curves.size());
  }
  for (int64_t k = 0; k < samples; k++) {
    IsoflopAnalysis r = a;
    uint64_t draw = 0;
    for (IsoflopBudget& b : r.budgets) {
      for (IsoflopCurve& c : b.curves) {
        for (size_t i = 0; i < c.loss.size(); i++) {
          const double mean = c.fitted ? parabola_eval(c.fit, c.log_n[i]) : c.loss[i];
          c.loss[i] = mean + a.noise * rng_normal(seed, 7000 + uint64_t(k), draw++);
        }
      }
    }
    analysis_solve(r);
    for (size_t b = 0; b < nb; b++) {
      const IsoflopBudget& rb = r.budgets[b];
      for (size_t i = 0; i < rb.curves.size(); i++) {
        if (rb.curves[i].fitted) {
          n_star[b][i].push_back(std::exp(rb.curves[i].best.x));
          l_star[b][i].push_back(rb.curves[i].best.y);
          gains[b][i].push_back(rb.curves[i].gain);
        }
      }
      if (rb.fitted) {
        s_star[b].push_back(rb.s_star);
        s_edges[b] += rb.best.edge != Edge::interior;
      }
    }
    const double slope = s_star_slope(r);
    if (std::isfinite(slope)) {
      slopes.push_back(slope);
      positive += slope > 0;
    }
  }
  for (size_t b = 0; b < nb; b++) {
    IsoflopBudget& ab = a.budgets[b];
    for (size_t i = 0; i < ab.curves.size(); i++) {
      ab.curves[i].n_ci = stat_percentiles(n_star[b][i]);
      ab.curves[i].loss_ci = stat_percentiles(l_star[b][i]);
      ab.curves[i].gain_ci = stat_percentiles(gains[b][i]);
    }
    ab.s_ci = stat_percentiles(s_star[b]);
    if (!s_star[b].empty()) {
      ab.s_edge_share = double(s_edges[b]) / double(s_star[b].size());
    }
  }
  a.slope_ci = stat_percentiles(slopes);
  a.slope_positive = slopes.empty() ? NAN : double(positive) / double(slopes.size());
}

}  // namespace

IsoflopAnalysis isoflop_analyze(std::span<const FitPoint> pts, int64_t bootstrap, uint64_t seed) {
  IsoflopAnalysis a;
  std::map<double, std::map<double, IsoflopCurve>> grid;  // budget -> S -> curve
  for (const FitPoint& p : pts) {
    IsoflopCurve& c = grid[p.budget][p.s];
    c.budget = p.budget, c.sparsity = p.s;
    c.log_n.push_back(std::log(p.n));
    c.log_d.push_back(std::log(p.d));
    c.loss.push_back(p.loss);
  }
  for (auto& [budget, curves] : grid) {
    IsoflopBudget b;
    b.budget = budget;
    b.s_lo = curves.begin()->first;
    b.s_hi = curves.rbegin()->first;
    for (auto& [s, c] : curves) {
      c.n_lo = std::exp(*std::min_element(c.log_n.begin(), c.log_n.end()));
      c.n_hi = std::exp(*std::max_element(c.log_n.begin(), c.log_n.end()));
      b.curves.push_back(std::move(c));
    }
    a.budgets.push_back(std::move(b));
  }
  analysis_solve(a);
  noise_estimate(a, pts);
  a.slope = s_star_slope(a);
  bootstrap_intervals(a, bootstrap, seed);
  return a;
}

}  // namespace moelab
