// Sparsity scaling laws: the CSV, the parametric law (Ceres, Huber on log L) and the per-budget
// quadratic surface (Eigen least squares). The command's printing and figures: fit_report.cpp.
#include "study/fit.hpp"

// This object is compiled for the prebuilt libceres.a's baseline instruction set (CMakeLists.txt:
// one vector ABI per template). There GCC 12 takes the SSE2 loops over Ceres's fixed-size Jet
// arrays for reads past them (-Warray-bounds, a false positive inside Ceres's and Eigen's headers):
// silenced for those headers only, which are included first here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#include <ceres/ceres.h>

#include <Eigen/Dense>
#pragma GCC diagnostic pop

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/parse.hpp"
#include "core/rng.hpp"
#include "kernels/parallel.hpp"

namespace moelab {

// ---- Input

namespace {

std::vector<std::string> split_csv_line(std::string_view line) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    std::string_view f =
        line.substr(start, comma == std::string_view::npos ? line.npos : comma - start);
    while (!f.empty() && (f.front() == ' ' || f.front() == '\t')) f.remove_prefix(1);
    while (!f.empty() && (f.back() == ' ' || f.back() == '\t' || f.back() == '\r'))
      f.remove_suffix(1);
    out.emplace_back(f);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

double parse_field(const std::string& path, size_t line, const std::string& col,
                   const std::string& text) {
  double v = 0;
  if (!parse_number(text, v) || !std::isfinite(v))
    fail(fmt::format("{}: line {}: column '{}': '{}' is not a number", path, line, col, text));
  return v;
}

// Two significant digits: the budget a run belongs to when the file names none.
double round2(double x) {
  if (x <= 0) return x;
  double scale = std::pow(10.0, std::floor(std::log10(x)) - 1);
  return std::round(x / scale) * scale;
}

}  // namespace

FitData fit_read_csv(const std::string& path, ParamCount count) {
  std::string text = file_read(path);
  FitData data;
  data.path = path;
  std::vector<std::string> header;
  std::map<std::string, int> col;
  size_t lineno = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line(text.data() + pos, (nl == text.npos ? text.size() : nl) - pos);
    pos = nl == text.npos ? text.size() : nl + 1;
    lineno++;
    if (line.find_first_not_of(" \t\r") == line.npos) continue;
    auto f = split_csv_line(line);
    if (header.empty()) {
      header = f;
      for (size_t i = 0; i < f.size(); i++) col[f[i]] = int(i);
      for (const char* need : {"params", "tokens", "loss"})
        if (!col.count(need))
          fail(fmt::format("{}: line 1: column '{}' is missing (need params, tokens, loss)", path,
                           need));
      data.has_active = col.count("active_params"), data.has_budget = col.count("budget");
      data.has_flops = col.count("flops"), data.has_sparsity = col.count("sparsity");
      const bool has_nonembed = col.count("params_nonembed") && col.count("active_params_nonembed");
      if (count == ParamCount::nonembed && !has_nonembed)
        fail(
            fmt::format("{}: line 1: --params nonembed needs the columns params_nonembed and "
                        "active_params_nonembed",
                        path));
      data.nonembed =
          count == ParamCount::nonembed || (count == ParamCount::automatic && has_nonembed);
      if (data.nonembed) data.has_active = true;
      continue;
    }
    if (f.size() != header.size())
      fail(fmt::format("{}: line {}: {} fields, the header has {}", path, lineno, f.size(),
                       header.size()));
    auto get = [&](const char* name) {
      return parse_field(path, lineno, name, f[size_t(col.at(name))]);
    };
    FitPoint p;
    const char* n_column = data.nonembed ? "params_nonembed" : "params";
    const char* active_column = data.nonembed ? "active_params_nonembed" : "active_params";
    p.n = get(n_column), p.d = get("tokens"), p.loss = get("loss");
    for (auto [name, v] : {std::pair{n_column, p.n}, {"tokens", p.d}, {"loss", p.loss}})
      if (v <= 0)
        fail(fmt::format("{}: line {}: column '{}': {} is not positive", path, lineno, name, v));
    if (data.has_sparsity) p.s = get("sparsity");
    if (!(p.s >= 0 && p.s < 1))
      fail(fmt::format("{}: line {}: column 'sparsity': {} is outside [0, 1)", path, lineno, p.s));
    p.n_active = data.has_active ? get(active_column) : p.n;
    if (p.n_active <= 0)
      fail(fmt::format("{}: line {}: column '{}': {} is not positive", path, lineno, active_column,
                       p.n_active));
    if (col.count("seed")) p.seed = int64_t(get("seed"));
    p.flops = data.has_flops ? get("flops") : 6 * p.n_active * p.d;
    p.budget = data.has_budget ? get("budget") : round2(p.flops);
    data.points.push_back(p);
  }
  if (header.empty()) fail(fmt::format("{}: line 1: no header (empty file)", path));
  if (data.points.empty()) fail(fmt::format("{}: line {}: no data rows", path, lineno));
  return data;
}

// ---- The parametric law

LawError law_error(const LawVec& p, Law law, std::span<const FitPoint> pts) {
  LawError e;
  if (pts.empty()) {
    return e;
  }
  double se = 0, rel = 0;
  for (const FitPoint& q : pts) {
    const double r = law_log_loss(p, law, q.n, q.d, q.s) - std::log(q.loss);
    se += r * r, rel += std::abs(std::expm1(r));
  }
  e.rmse_log_loss = std::sqrt(se / double(pts.size()));
  e.mean_abs_rel_error = rel / double(pts.size());
  return e;
}

const char* law_name(Law law) {
  return law == Law::chinchilla ? "chinchilla" : "sparsity";
}
int law_nparams(Law law) {
  return law == Law::chinchilla ? 5 : 10;
}

namespace {

// The Ceres parameter block: chinchilla a', b', e', alpha, beta; sparsity all ten in LawVec
// order.
constexpr std::array<int, 5> kChinchillaSlots = {kA, kB, kE, kAlpha, kBeta};

template <class T>
T lse(const T* t, int n) {
  using std::exp;
  using std::log;
  T m = t[0];
  for (int i = 1; i < n; i++)
    if (t[i] > m) m = t[i];
  T sum = T(0);
  for (int i = 0; i < n; i++) sum += exp(t[i] - m);
  return m + log(sum);
}

struct LawResidual {
  double log_n, log_d, log_1s, log_l;
  bool sparse;
  template <class T>
  bool operator()(const T* p, T* r) const {
    T t[5];
    if (!sparse) {  // a', b', e', alpha, beta
      t[0] = p[0] - p[3] * log_n, t[1] = p[1] - p[4] * log_d, t[2] = p[2];
      r[0] = lse(t, 3) - log_l;
      return true;
    }
    t[0] = p[kA] - p[kAlpha] * log_n, t[1] = p[kB] - p[kBeta] * log_d;
    t[2] = p[kC] - p[kLambda] * log_1s;
    t[3] = p[kD] - p[kDelta] * log_1s - p[kGamma] * log_n;
    t[4] = p[kE];
    r[0] = lse(t, 5) - log_l;
    return true;
  }
};

double huber(double r, double delta) {
  double a = std::abs(r);
  return a <= delta ? 0.5 * r * r : delta * (a - 0.5 * delta);
}

double law_objective(std::span<const FitPoint> pts, const LawVec& p, Law law, double delta) {
  double sum = 0;
  for (const FitPoint& x : pts)
    sum += huber(law_log_loss(p, law, x.n, x.d, x.s) - std::log(x.loss), delta);
  return sum;
}

// One local minimisation from p (in place). Ceres minimises 1/2 sum rho(r^2); HuberLoss(delta)
// has rho(s) = s for s <= delta^2 and 2 delta sqrt(s) - delta^2 above, so 1/2 rho(r^2) is
// exactly Huber_delta(r) = r^2/2 (|r| <= delta), delta (|r| - delta/2) (above): the cost Ceres
// reports is the objective itself.
void law_solve(std::span<const FitPoint> pts, LawVec& p, Law law, double delta, int iters) {
  bool sparse = law == Law::sparsity;
  int np = law_nparams(law);
  std::array<double, kLawParams> block{};
  for (int i = 0; i < np; i++)
    block[size_t(i)] = sparse ? p[size_t(i)] : p[kChinchillaSlots[size_t(i)]];
  ceres::Problem::Options po;
  po.loss_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  ceres::Problem problem(po);
  ceres::HuberLoss loss(delta);
  for (const FitPoint& x : pts) {
    LawResidual res{std::log(x.n), std::log(x.d), std::log1p(-x.s), std::log(x.loss), sparse};
    ceres::CostFunction* cost =
        sparse ? static_cast<ceres::CostFunction*>(
                     new ceres::AutoDiffCostFunction<LawResidual, 1, 10>(new LawResidual(res)))
               : new ceres::AutoDiffCostFunction<LawResidual, 1, 5>(new LawResidual(res));
    problem.AddResidualBlock(cost, &loss, block.data());
  }
  ceres::Solver::Options so;
  so.linear_solver_type = ceres::DENSE_QR;
  so.max_num_iterations = iters;
  so.function_tolerance = 1e-14, so.gradient_tolerance = 1e-14, so.parameter_tolerance = 1e-12;
  so.logging_type = ceres::SILENT;
  so.num_threads = 1;
  ceres::Solver::Summary summary;
  ceres::Solve(so, &problem, &summary);
  for (int i = 0; i < np; i++)
    (sparse ? p[size_t(i)] : p[kChinchillaSlots[size_t(i)]]) = block[size_t(i)];
}

}  // namespace

double law_log_loss(const LawVec& p, Law law, double n, double d, double s) {
  double ln = std::log(n), ld = std::log(d), l1s = std::log1p(-s);
  if (law == Law::chinchilla) {
    double t[3] = {p[kA] - p[kAlpha] * ln, p[kB] - p[kBeta] * ld, p[kE]};
    return lse(t, 3);
  }
  double t[5] = {p[kA] - p[kAlpha] * ln, p[kB] - p[kBeta] * ld, p[kC] - p[kLambda] * l1s,
                 p[kD] - p[kDelta] * l1s - p[kGamma] * ln, p[kE]};
  return lse(t, 5);
}

std::vector<LawVec> law_grid_chinchilla(bool small) {
  std::vector<double> ab =
      small ? std::vector<double>{0, 5, 10} : std::vector<double>{0, 5, 10, 15, 20, 25};
  std::vector<double> ex =
      small ? std::vector<double>{0, 0.5} : std::vector<double>{0, 0.5, 1, 1.5, 2};
  std::vector<LawVec> out;
  for (double alpha : ex)
    for (double beta : ex)
      for (double e : {-1.0, -0.5, 0.0, 0.5, 1.0})
        for (double a : ab)
          for (double b : ab) {
            LawVec p{};
            p[kA] = a, p[kB] = b, p[kE] = e, p[kAlpha] = alpha, p[kBeta] = beta;
            out.push_back(p);
          }
  return out;
}

std::vector<LawVec> law_sparsity_starts(const LawVec& base) {
  std::vector<LawVec> out;
  for (double c : {-4.0, -1.0, 2.0})
    for (double lambda : {-1.0, -0.3, 0.3, 1.0})
      for (double d : {-2.0, 2.0, 6.0})
        for (double delta : {-1.0, 0.0, 1.0})
          for (double gamma : {0.1, 0.3}) {
            LawVec p = base;
            p[kC] = c, p[kLambda] = lambda, p[kD] = d, p[kDelta] = delta, p[kGamma] = gamma;
            out.push_back(p);
          }
  return out;
}

LawFit law_fit(std::span<const FitPoint> pts, const LawFitOptions& o) {
  std::vector<LawVec> starts = o.starts.empty() ? law_grid_chinchilla(false) : o.starts;
  std::vector<LawVec> ends(starts.size());
  std::vector<double> obj(starts.size());
  parallel_for(int64_t(starts.size()), 1, true, [&](int64_t j) {
    const auto i = size_t(j);
    ends[i] = starts[i];
    law_solve(pts, ends[i], o.law, o.huber_delta, o.max_iterations);
    obj[i] = law_objective(pts, ends[i], o.law, o.huber_delta);
    if (!std::isfinite(obj[i])) obj[i] = std::numeric_limits<double>::infinity();
  });
  size_t best = size_t(std::min_element(obj.begin(), obj.end()) - obj.begin());
  LawFit f;
  f.p = ends[best], f.objective = obj[best], f.best_start = int(best),
  f.starts = int(starts.size());
  if (o.law == Law::chinchilla)  // the absent S terms: zero, so that p prints cleanly
    for (int i : {kC, kD, kLambda, kDelta, kGamma}) f.p[size_t(i)] = 0;
  return f;
}

LawFit law_fit_default(std::span<const FitPoint> pts, Law law, bool small_grid) {
  LawFitOptions o;
  o.law = Law::chinchilla;
  o.starts = law_grid_chinchilla(small_grid);
  LawFit base = law_fit(pts, o);
  if (law == Law::chinchilla) return base;
  o.law = Law::sparsity;
  o.starts = law_sparsity_starts(base.p);
  LawFit f = law_fit(pts, o);
  f.starts += base.starts;
  return f;
}

// ---- The per-budget surface

namespace {

int surface_ncoef(SurfaceDegrees g) {
  return g.n + g.s + g.ns + 1;
}

void surface_row(SurfaceDegrees g, double n, double s, double* row) {
  double nh = std::log(n), sh = -std::log1p(-s);
  int k = 0;
  for (int i = 1; i <= g.n; i++) row[k++] = std::pow(nh, i);
  for (int i = 1; i <= g.s; i++) row[k++] = std::pow(sh, i);
  for (int i = 1; i <= g.ns; i++) row[k++] = std::pow(nh * sh, i);
  row[k] = 1;
}

// Least squares on the given rows; columns scaled to unit norm for conditioning.
std::vector<double> surface_solve(std::span<const FitPoint> pts, std::span<const size_t> rows,
                                  SurfaceDegrees g) {
  int m = surface_ncoef(g);
  Eigen::MatrixXd X(rows.size(), m);
  Eigen::VectorXd y(rows.size());
  std::vector<double> xr(static_cast<size_t>(m));
  for (size_t r = 0; r < rows.size(); r++) {
    surface_row(g, pts[rows[r]].n, pts[rows[r]].s, xr.data());  // X is column-major
    for (int j = 0; j < m; j++) X(Eigen::Index(r), j) = xr[size_t(j)];
    y(Eigen::Index(r)) = pts[rows[r]].loss;
  }
  Eigen::VectorXd scale = X.colwise().norm().transpose();
  for (int j = 0; j < m; j++)
    if (scale(j) == 0) scale(j) = 1;
  Eigen::MatrixXd Xs = X * scale.cwiseInverse().asDiagonal();
  Eigen::VectorXd c = Xs.colPivHouseholderQr().solve(y).cwiseQuotient(scale);
  return std::vector<double>(c.data(), c.data() + m);
}

}  // namespace

double surface_eval(const Surface& f, double n, double s) {
  std::vector<double> row(size_t(surface_ncoef(f.deg)));
  surface_row(f.deg, n, s, row.data());
  double sum = 0;
  for (size_t i = 0; i < row.size(); i++) sum += row[i] * f.coef[i];
  return sum;
}

Surface surface_fit(std::span<const FitPoint> pts, SurfaceDegrees deg) {
  Surface f;
  f.n_min = f.s_min = std::numeric_limits<double>::infinity();
  f.n_max = f.s_max = -f.n_min;
  for (const FitPoint& p : pts) {
    f.n_min = std::min(f.n_min, p.n), f.n_max = std::max(f.n_max, p.n);
    f.s_min = std::min(f.s_min, p.s), f.s_max = std::max(f.s_max, p.s);
  }
  if (f.s_max == f.s_min) deg.s = deg.ns = 0;  // S does not vary: its terms are unidentifiable
  f.deg = deg;
  std::vector<size_t> rows(pts.size());
  for (size_t i = 0; i < rows.size(); i++) rows[i] = i;
  f.coef = surface_solve(pts, rows, deg);
  return f;
}

double surface_heldout_mse(std::span<const FitPoint> pts, SurfaceDegrees deg, int k,
                           uint64_t seed) {
  size_t n = pts.size(), ntest = std::max<size_t>(1, n / 5);
  if (n < ntest + size_t(surface_ncoef(deg)) + 1 || k <= 0)
    return std::numeric_limits<double>::infinity();
  double sum = 0;
  for (int split = 0; split < k; split++) {
    std::vector<size_t> idx(n);
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t i = n - 1; i > 0; i--)  // Fisher-Yates
      std::swap(idx[i], idx[rng_u64(seed, uint64_t(split), i) % (i + 1)]);
    std::span<const size_t> test(idx.data(), ntest), train(idx.data() + ntest, n - ntest);
    Surface f;
    f.deg = deg;
    f.coef = surface_solve(pts, train, deg);
    double se = 0;
    for (size_t t : test) se += std::pow(surface_eval(f, pts[t].n, pts[t].s) - pts[t].loss, 2);
    sum += se / double(ntest);
  }
  return sum / k;
}

SurfaceDegrees surface_select(std::span<const FitPoint> pts, int k, uint64_t seed) {
  bool s_varies = false;
  for (const FitPoint& p : pts) s_varies |= p.s != pts[0].s;
  SurfaceDegrees best{0, 0, 0};
  double best_mse = std::numeric_limits<double>::infinity();
  for (int a = 0; a <= 3; a++)
    for (int b = 0; b <= (s_varies ? 3 : 0); b++)
      for (int c = 0; c <= (s_varies ? 3 : 0); c++) {
        double mse = surface_heldout_mse(pts, {a, b, c}, k, seed);
        if (mse < best_mse) best_mse = mse, best = {a, b, c};
      }
  return best;
}

namespace {

// Minimum of f on [lo, hi]: a grid of 257 points, then golden section around the best.
template <class F>
double argmin_1d(F f, double lo, double hi) {
  if (!(hi > lo)) return lo;
  const int n = 256;
  int best = 0;
  double best_v = f(lo);
  for (int i = 1; i <= n; i++) {
    double v = f(lo + (hi - lo) * i / n);
    if (v < best_v) best_v = v, best = i;
  }
  double a = lo + (hi - lo) * std::max(0, best - 1) / n;
  double b = lo + (hi - lo) * std::min(n, best + 1) / n;
  const double g = 0.5 * (std::sqrt(5.0) - 1);
  for (int it = 0; it < 60; it++) {
    double x1 = b - g * (b - a), x2 = a + g * (b - a);
    if (f(x1) < f(x2))
      b = x2;
    else
      a = x1;
  }
  double x = 0.5 * (a + b);
  return f(x) <= best_v ? x : lo + (hi - lo) * best / n;
}

}  // namespace

double surface_argmin_n(const Surface& f, double s, double n_lo, double n_hi) {
  double ln = argmin_1d([&](double x) { return surface_eval(f, std::exp(x), s); }, std::log(n_lo),
                        std::log(n_hi));
  return std::exp(ln);
}

double surface_argmin_s(const Surface& f, double n, double s_lo, double s_hi) {
  return argmin_1d([&](double s) { return surface_eval(f, n, s); }, s_lo, s_hi);
}

// ---- Budgets and recommendation

std::vector<std::pair<double, std::vector<FitPoint>>> fit_group_budgets(
    std::span<const FitPoint> pts) {
  std::map<double, std::vector<FitPoint>> groups;
  for (const FitPoint& p : pts) groups[p.budget].push_back(p);
  return {groups.begin(), groups.end()};
}

double fit_shared_fraction(const FitData& data, double fallback) {
  if (!data.has_active) return fallback;
  // N_a / N - (1 - S) = f S: least squares for f over the sparse runs.
  double num = 0, den = 0;
  for (const FitPoint& p : data.points)
    if (p.s > 0) num += p.s * (p.n_active / p.n - (1 - p.s)), den += p.s * p.s;
  if (den == 0) return fallback;
  return std::clamp(num / den, 0.0, 1.0);
}

Recommendation law_best_n(const LawVec& p, Law law, double budget, double s, double shared,
                          double n_lo, double n_hi) {
  auto n_active = [&](double n) { return n * (shared + (1 - shared) * (1 - s)); };
  auto loss_at = [&](double ln) {
    double n = std::exp(ln);
    return law_log_loss(p, law, n, budget / (6 * n_active(n)), s);
  };
  Recommendation r;
  r.s = s, r.n = std::exp(argmin_1d(loss_at, std::log(n_lo), std::log(n_hi)));
  r.n_active = n_active(r.n), r.d = budget / (6 * r.n_active);
  r.loss = std::exp(loss_at(std::log(r.n)));
  return r;
}

Recommendation law_recommend(const LawVec& p, Law law, double budget, double shared, double n_lo,
                             double n_hi) {
  double s_hi = law == Law::chinchilla ? 0.0 : 0.99;
  auto n_active = [&](double n, double s) { return n * (shared + (1 - shared) * (1 - s)); };
  auto loss_at = [&](double ln, double s) {
    double n = std::exp(ln), d = budget / (6 * n_active(n, s));
    return law_log_loss(p, law, n, d, s);
  };
  // Per S the best N (1-D search), then the best S: the inner search is exact per S.
  auto best_ln = [&](double s) {
    return argmin_1d([&](double ln) { return loss_at(ln, s); }, std::log(n_lo), std::log(n_hi));
  };
  double s = argmin_1d([&](double s) { return loss_at(best_ln(s), s); }, 0.0, s_hi);
  Recommendation r;
  r.s = s, r.n = std::exp(best_ln(s)), r.n_active = n_active(r.n, s);
  r.d = budget / (6 * r.n_active), r.loss = std::exp(loss_at(std::log(r.n), s));
  return r;
}

}  // namespace moelab
