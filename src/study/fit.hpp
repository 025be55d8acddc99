#pragma once
// Sparsity scaling laws (Abnar et al. 2025) fitted to a sweep's final losses.
//
// The parametric law, in log-sum-exp form (p = a', b', c', d', e', alpha, beta, lambda, delta,
// gamma; A = exp(a') etc.):
//   log L = LSE(a' - alpha log N, b' - beta log D, c' - lambda log(1-S),
//               d' - delta log(1-S) - gamma log N, e')
//   i.e. L = A/N^alpha + B/D^beta + C/(1-S)^lambda + D'/((1-S)^delta N^gamma) + E,
// fitted as Hoffmann et al. / Besiroglu et al. do: the sum over runs of Huber(1e-3) of the
// residual of log L, minimised from a grid of starts, the best kept. The Chinchilla law is the
// special case without the two S terms.
//
// The per-budget surface: at each training budget C, L(N, S) is a polynomial in Nh = log N,
// Sh = -log(1-S) and their product (degrees a1, a2, a3) plus a constant, by least squares.
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace moelab {

// ---- Input

struct FitPoint {
  double n = 0;         // parameters: non-embedding or total (FitData::nonembed)
  double d = 0;         // training tokens
  double loss = 0;      // final held-out loss
  double flops = 0;     // training FLOPs (6 N_a D when the file has none)
  double n_active = 0;  // active parameters (N when the file has none)
  double s = 0;         // sparsity (E-K)/E
  double budget = 0;    // planned budget (flops to 2 significant digits when the file has none)
  int64_t seed = 1;     // the run's seed (1 when the file has none)
};

// Which N the fits use: the scaling-law literature's (Kaplan et al., Hoffmann et al.) counts
// neither the input embedding nor the output head; `automatic` takes it where the CSV has the
// columns params_nonembed and active_params_nonembed, else every parameter.
enum class ParamCount { automatic, nonembed, total };

struct FitData {
  std::string path;
  std::vector<FitPoint> points;
  bool has_active = false, has_budget = false, has_flops = false, has_sparsity = false;
  bool nonembed = false;  // N and N_active exclude the embedding and the output head
};

// Reads a CSV with a header; columns by name (params, tokens, loss required; flops,
// active_params, sparsity, budget, seed, params_nonembed, active_params_nonembed optional; others
// ignored). Fails with one line naming the file, line and column.
FitData fit_read_csv(const std::string& path, ParamCount count = ParamCount::automatic);

// ---- The parametric law

enum class Law { chinchilla, sparsity };
constexpr int kLawParams = 10;
using LawVec = std::array<double, kLawParams>;
// Indices into LawVec.
enum LawIndex { kA = 0, kB, kC, kD, kE, kAlpha, kBeta, kLambda, kDelta, kGamma };

const char* law_name(Law law);
int law_nparams(Law law);  // 5 or 10: the chinchilla law uses a', b', e', alpha, beta
// log L predicted by the law (chinchilla: the S terms are absent whatever p holds there).
double law_log_loss(const LawVec& p, Law law, double n, double d, double s);

// How the law predicts runs it was not fitted to: RMSE of log L, mean |relative error| of L.
struct LawError {
  double rmse_log_loss = NAN, mean_abs_rel_error = NAN;
};
LawError law_error(const LawVec& p, Law law, std::span<const FitPoint> pts);

struct LawFitOptions {
  Law law = Law::sparsity;
  double huber_delta = 1e-3;
  int max_iterations = 500;
  std::vector<LawVec> starts;  // empty: law_grid(law, full)
};

struct LawFit {
  LawVec p{};
  double objective = 0;  // sum of Huber(delta) of the residuals of log L
  int best_start = -1;   // index into the starts
  int starts = 0;
};

// The starts: chinchilla: alpha, beta in {0,.5,1,1.5,2}, e in {-1,-.5,0,.5,1}, a, b in
// {0,5,...,25} (4,500, Besiroglu et al.); `small` keeps alpha, beta in {0, .5} and a, b in
// {0, 5, 10} (180). sparsity: see law_sparsity_starts.
std::vector<LawVec> law_grid_chinchilla(bool small);
// The S terms' starts around a chinchilla solution: c' in {-4,-1,2}, lambda in
// {-1,-.3,.3,1}, d' in {-2,2,6}, delta in {-1,0,1}, gamma in {.1,.3} (216).
std::vector<LawVec> law_sparsity_starts(const LawVec& base);

// Minimises sum Huber(residual of log L) from every start (in parallel), keeps the best.
LawFit law_fit(std::span<const FitPoint> pts, const LawFitOptions& o);
// The default procedure: chinchilla: the grid; sparsity: the chinchilla grid on all points,
// then the S-term starts around its best.
LawFit law_fit_default(std::span<const FitPoint> pts, Law law, bool small_grid = false);

// ---- The per-budget surface

struct SurfaceDegrees {
  int n = 2, s = 2, ns = 2;
};

struct Surface {
  SurfaceDegrees deg;
  std::vector<double> coef;                           // [a_1..a_n, b_1..b_s, c_1..c_ns, d]
  double heldout_mse = 0;                             // mean over k random 80/20 splits
  double n_min = 0, n_max = 0, s_min = 0, s_max = 0;  // observed ranges
};

double surface_eval(const Surface& f, double n, double s);
// Least squares on all points (degrees of S dropped when S does not vary).
Surface surface_fit(std::span<const FitPoint> pts, SurfaceDegrees deg);
// Mean held-out MSE over k random 80/20 splits (seeded); +inf when too few points.
double surface_heldout_mse(std::span<const FitPoint> pts, SurfaceDegrees deg, int k, uint64_t seed);
// Degrees in {0..3}^3 with the least held-out MSE.
SurfaceDegrees surface_select(std::span<const FitPoint> pts, int k, uint64_t seed);
// argmin over log N in [n_lo, n_hi] at fixed S, and over S in [s_lo, s_hi] at fixed N.
double surface_argmin_n(const Surface& f, double s, double n_lo, double n_hi);
double surface_argmin_s(const Surface& f, double n, double s_lo, double s_hi);

// ---- Budgets and recommendation

// Points grouped by budget, ascending.
std::vector<std::pair<double, std::vector<FitPoint>>> fit_group_budgets(
    std::span<const FitPoint> pts);

// N_a = N (f + (1-f)(1-S)): the shared fraction f from the file's active_params (least squares
// over its sparse runs) or `fallback`.
double fit_shared_fraction(const FitData& data, double fallback);

struct Recommendation {
  double s = 0, n = 0, n_active = 0, d = 0, loss = 0;
};
// At fixed S: the N in [n_lo, n_hi] of least loss with D = C / (6 N_a).
Recommendation law_best_n(const LawVec& p, Law law, double budget, double s, double shared,
                          double n_lo, double n_hi);
// Minimises the law over S in [0, 0.99] and N in [n_lo, n_hi] with D = C / (6 N_a).
Recommendation law_recommend(const LawVec& p, Law law, double budget, double shared, double n_lo,
                             double n_hi);

// ---- The command

struct FitOptions {
  std::string csv, out;
  std::optional<Law> law;        // default: chinchilla when every S is 0
  int bootstrap = 100;           // 0: none
  int isoflop_bootstrap = 2000;  // the runs' optima: parametric bootstrap samples
  bool holdout = true;           // the points at the largest S held out (sparsity law)
  std::optional<double> budget;  // recommend S, N, N_a, D at this budget
  std::optional<double> max_params;
  double shared_fraction = 0.1;
  bool select_degrees = false;
  int splits = 20;
  bool plots = true;
  bool small_grid = false;
  int drop_highest = 0;  // runs of highest loss dropped first (the replication drops 5)
  ParamCount params = ParamCount::automatic;
  uint64_t seed = 1;
};

// Fits, prints, writes OUT/fit.json and the figures. Returns the json text.
std::string fit_run(const FitOptions& o);

}  // namespace moelab
