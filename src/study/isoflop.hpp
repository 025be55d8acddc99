#pragma once
// Optima read from the runs themselves, beside the law (Hoffmann et al.'s second approach, with
// sparsity as Abnar et al. read it): at each budget C and sparsity S, a parabola of the final loss
// in ln N through the runs gives N* and L*; across the sparsities of a budget, a parabola of L*
// in Sh = -ln(1 - S) gives S*(C); the slope of S* against log10 C says whether the optimal
// sparsity rises with the budget. Intervals come from a parametric bootstrap: the parabolas'
// fitted losses plus Gaussian noise of the larger of the pooled residual spread and the spread
// between seeds of one run. An optimum is never silently at the edge of what was searched: a
// vertex outside the runs' N (or S) range, or a parabola that opens downwards, is reported as the
// better end of the range with the edge named.
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "study/fit.hpp"
#include "study/stats.hpp"

namespace moelab {

// Where a minimum over a searched range lies.
enum class Edge { interior, lower, upper };
const char* edge_name(Edge e);  // "interior", "at the lower edge", "at the upper edge"

struct Parabola {
  double c2 = 0, c1 = 0, c0 = 0;  // y = c2 x^2 + c1 x + c0
};
// Least squares through (x_i, y_i); the points need 3 distinct x.
Parabola parabola_fit(std::span<const double> x, std::span<const double> y);
double parabola_eval(const Parabola& p, double x);

// y = slope x + icept by least squares; slope NaN with fewer than two distinct x.
struct Line {
  double slope = NAN, icept = NAN;
};
Line line_fit(std::span<const double> x, std::span<const double> y);

// The minimum of p over [lo, hi]: its vertex where c2 > 0 and the vertex is inside, else the
// better end, with that edge.
struct Vertex {
  double x = NAN, y = NAN;
  Edge edge = Edge::interior;
};
Vertex parabola_min(const Parabola& p, double lo, double hi);

// S* from the optimal losses of the curves of one budget: a parabola of L* in Sh = -ln(1 - S)
// with three sparsities or more (its minimum over [sh_lo, sh_hi]), the better of two otherwise.
// Returns x = Sh*.
Vertex sparsity_optimum(std::span<const double> sh, std::span<const double> loss, double sh_lo,
                        double sh_hi);

// One IsoFLOP curve: the runs of one budget and sparsity.
struct IsoflopCurve {
  double budget = 0, sparsity = 0;
  std::vector<double> log_n, log_d, loss;  // the runs, every seed: ln N, ln D, final loss
  double n_lo = 0, n_hi = 0;               // the searched N
  bool fitted = false;                     // 3 distinct N or more
  Parabola fit;                            // loss against ln N
  Vertex best;                             // x = ln N*, y = L*
  Interval n_ci, loss_ci;                  // N* and L*, 95% bootstrap
  // L* minus the L* of the budget's least sparse curve (its first), with the bootstrap's
  // interval of that difference: does sparsity lower the optimal loss at this budget?
  double gain = NAN;
  Interval gain_ci;
  double law_n = NAN, law_loss = NAN;           // the law's optimum along the runs' line (fit_run)
  Edge law_edge = Edge::interior;               // that optimum against the searched N
  double law_d_icept = NAN, law_d_slope = NAN;  // the runs' line: ln D = icept + slope ln N
};

struct IsoflopBudget {
  double budget = 0;
  std::vector<IsoflopCurve> curves;  // ascending S
  double s_lo = 0, s_hi = 0;         // the searched S
  bool fitted = false;               // an S* (two fitted curves or more)
  Parabola fit;                      // L* against Sh = -ln(1 - S) (three curves or more)
  Vertex best;                       // x = Sh*, y = L*
  double s_star = NAN;               // 1 - exp(-Sh*)
  Interval s_ci;                     // 95% bootstrap
  double s_edge_share = NAN;         // bootstrap samples whose S* is at an edge
  double law_s = NAN;                // the law's S* by the same parabola (fit_run)
  Edge law_edge = Edge::interior;
};

struct IsoflopAnalysis {
  std::vector<IsoflopBudget> budgets;  // ascending C
  double residual_sd = NAN;            // pooled over the parabolas in ln N
  int64_t residual_dof = 0;
  double seed_sd = NAN;  // pooled over runs repeated under other seeds (same C, S, N)
  int64_t seed_groups = 0, seed_dof = 0;
  double noise = NAN;  // the bootstrap's noise: the larger of the two
  int64_t bootstrap = 0;
  // S* against log10 C by least squares over the budgets with an S*: the slope, its 95%
  // bootstrap interval, and the share of samples with a positive slope.
  double slope = NAN;
  Interval slope_ci;
  double slope_positive = NAN;
};

IsoflopAnalysis isoflop_analyze(std::span<const FitPoint> pts, int64_t bootstrap, uint64_t seed);

}  // namespace moelab
