// Optima read from the runs (study/isoflop.hpp): the parabola and its vertex against a known
// optimum, the edge flags, S* and its slope over budgets on synthetic IsoFLOP data whose optimal
// N and S are known, and the bootstrap intervals covering them.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.hpp"
#include "study/isoflop.hpp"

using namespace moelab;

TEST(Isoflop, ParabolaThroughExactPointsIsExact) {
  // y = 0.3 (x - 11.2)^2 + 2.5 at x = ln N for N around 7e4: large x, as ln N is.
  std::vector<double> x, y;
  for (double n : {2e4, 4e4, 8e4, 1.6e5, 3.2e5}) {
    x.push_back(std::log(n));
    y.push_back(0.3 * (std::log(n) - 11.2) * (std::log(n) - 11.2) + 2.5);
  }
  const Parabola p = parabola_fit(x, y);
  EXPECT_NEAR(p.c2, 0.3, 1e-9);
  const Vertex v = parabola_min(p, x.front(), x.back());
  EXPECT_EQ(v.edge, Edge::interior);
  EXPECT_NEAR(v.x, 11.2, 1e-8);
  EXPECT_NEAR(v.y, 2.5, 1e-9);
}

TEST(Isoflop, MinimumOutsideTheSearchIsTheEdge) {
  const Parabola up{0.5, -2 * 0.5 * 3.0, 0.5 * 9.0 + 1};  // vertex at x = 3
  Vertex v = parabola_min(up, 4, 6);                      // searched range above the vertex
  EXPECT_EQ(v.edge, Edge::lower);
  EXPECT_EQ(v.x, 4);
  v = parabola_min(up, 0, 2);
  EXPECT_EQ(v.edge, Edge::upper);
  EXPECT_EQ(v.x, 2);
  // Opening downwards: no minimum inside; the better end.
  const Parabola down{-1, 0, 0};
  v = parabola_min(down, -1, 3);
  EXPECT_EQ(v.edge, Edge::upper);
  EXPECT_EQ(v.x, 3);
  EXPECT_STREQ(edge_name(Edge::lower), "at the lower edge");
}

namespace {

// Synthetic sweep: at budget C and sparsity S the loss is a parabola in ln N with its vertex at
// ln N*(C, S) = ln(2e4) + 0.5 ln(C / 1e12) + 0.6 Sh and its depth
// L*(C, S) = 3 - 0.2 log10(C / 1e12) + k (Sh - Sh*(C))^2, Sh = -ln(1 - S): the optimal S rises
// with the budget by construction (Sh*(C) = 0.7 + 0.5 log10(C / 1e12)).
std::vector<FitPoint> synthetic(double noise, uint64_t seed) {
  std::vector<FitPoint> pts;
  uint64_t i = 0;
  for (double c : {3e11, 1e12, 3e12}) {
    const double sh_star = 0.7 + 0.5 * std::log10(c / 1e12);
    for (double s : {0.0, 0.5, 0.75, 0.875}) {
      const double sh = -std::log1p(-s);
      const double ln_star = std::log(2e4) + 0.5 * std::log(c / 1e12) + 0.6 * sh;
      const double l_star = 3 - 0.2 * std::log10(c / 1e12) + 0.08 * (sh - sh_star) * (sh - sh_star);
      for (double f : {0.25, 0.5, 1.0, 2.0, 4.0}) {
        FitPoint p;
        p.budget = c, p.s = s, p.n = std::exp(ln_star) * f, p.d = c / (6 * p.n);
        const double u = std::log(f);
        p.loss = l_star + 0.04 * u * u + noise * rng_normal(seed, 1, i++);
        pts.push_back(p);
      }
    }
  }
  return pts;
}

}  // namespace

TEST(Isoflop, RecoversKnownOptimaAndARisingSparsity) {
  const IsoflopAnalysis a = isoflop_analyze(synthetic(0, 1), 0, 1);
  ASSERT_EQ(a.budgets.size(), 3u);
  for (const IsoflopBudget& b : a.budgets) {
    const double sh_star = 0.7 + 0.5 * std::log10(b.budget / 1e12);
    ASSERT_EQ(b.curves.size(), 4u);
    for (const IsoflopCurve& c : b.curves) {
      const double sh = -std::log1p(-c.sparsity);
      const double ln_star = std::log(2e4) + 0.5 * std::log(b.budget / 1e12) + 0.6 * sh;
      ASSERT_TRUE(c.fitted);
      EXPECT_EQ(c.best.edge, Edge::interior);
      EXPECT_NEAR(c.best.x, ln_star, 1e-6);
    }
    // L* is exactly quadratic in Sh, so the S parabola finds Sh* where it lies inside.
    ASSERT_TRUE(b.fitted);
    EXPECT_NEAR(b.best.x, std::clamp(sh_star, 0.0, -std::log1p(-0.875)), 1e-6) << b.budget;
    EXPECT_NEAR(b.s_star, -std::expm1(-b.best.x), 1e-12);
  }
  EXPECT_GT(a.slope, 0);
  EXPECT_NEAR(a.residual_sd, 0, 1e-6);
  // L*(S) - L*(0) at the middle budget: 0.08 ((Sh - 0.7)^2 - 0.7^2).
  for (const IsoflopCurve& c : a.budgets[1].curves) {
    const double sh = -std::log1p(-c.sparsity);
    EXPECT_NEAR(c.gain, 0.08 * ((sh - 0.7) * (sh - 0.7) - 0.49), 1e-9) << c.sparsity;
  }
}

TEST(Isoflop, NoisyRunsGiveIntervalsThatCoverTheTruth) {
  const IsoflopAnalysis a = isoflop_analyze(synthetic(0.01, 3), 400, 5);
  EXPECT_EQ(a.bootstrap, 400);
  EXPECT_NEAR(a.residual_sd, 0.01, 0.005);
  int covered = 0, total = 0;
  for (const IsoflopBudget& b : a.budgets) {
    for (const IsoflopCurve& c : b.curves) {
      const double n_star =
          2e4 * std::sqrt(b.budget / 1e12) * std::exp(0.6 * -std::log1p(-c.sparsity));
      covered += c.n_ci.lo <= n_star && n_star <= c.n_ci.hi;
      total++;
    }
  }
  EXPECT_GE(covered, total - 2) << covered << " of " << total;  // 95% intervals, 12 curves
  EXPECT_GT(a.slope_positive, 0.9);
  EXPECT_TRUE(a.slope_ci.lo > 0);
}

TEST(Isoflop, OptimumBelowTheWidthsIsFlaggedNotExtrapolated) {
  // Loss rising with N over the whole searched range: the smallest width, at the lower edge.
  std::vector<FitPoint> pts;
  for (double n : {1e4, 2e4, 4e4, 8e4}) {
    FitPoint p;
    p.budget = 1e12, p.s = 0, p.n = n, p.d = 1e12 / (6 * n);
    p.loss = 3 + 0.1 * std::log(n / 5e3) * std::log(n / 5e3);
    pts.push_back(p);
  }
  const IsoflopAnalysis a = isoflop_analyze(pts, 0, 1);
  const IsoflopCurve& c = a.budgets[0].curves[0];
  EXPECT_EQ(c.best.edge, Edge::lower);
  EXPECT_NEAR(std::exp(c.best.x), 1e4, 1e-6);
  EXPECT_FALSE(a.budgets[0].fitted);  // one sparsity: no S*
}

TEST(Isoflop, SeedsGiveTheNoiseFloor) {
  std::vector<FitPoint> pts = synthetic(0, 1);
  const size_t n = pts.size();
  for (size_t i = 0; i < n; i++) {
    FitPoint p = pts[i];
    p.seed = 2;
    p.loss += (i % 2 ? 0.02 : -0.02);
    pts.push_back(p);
  }
  const IsoflopAnalysis a = isoflop_analyze(pts, 0, 1);
  EXPECT_EQ(a.seed_groups, int64_t(n));
  // Pairs differing by 0.02: the pooled sd of a pair (l, l + 0.02) is 0.02 / sqrt(2).
  EXPECT_NEAR(a.seed_sd, 0.02 / std::sqrt(2.0), 1e-9);
  EXPECT_NEAR(a.noise, std::max(a.seed_sd, a.residual_sd), 1e-12);
}
