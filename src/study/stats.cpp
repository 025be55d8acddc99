#include "study/stats.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moelab {

namespace {

// The continued fraction of the regularized incomplete beta function (modified Lentz), which
// converges fast for x < (a + 1) / (a + b + 2). One function of Student's t is all the reports
// need: a library for it (Boost.Math) would add a large dependency for a few dozen lines.
double beta_continued_fraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300;
  auto guard = [](double v) { return std::abs(v) < kTiny ? kTiny : v; };
  double c = 1;
  double d = 1 / guard(1 - (a + b) * x / (a + 1));
  double h = d;
  for (int m = 1; m <= 500; m++) {
    const double m2 = 2.0 * m;
    double step = m * (b - m) * x / ((a - 1 + m2) * (a + m2));  // even step
    d = 1 / guard(1 + step * d);
    c = guard(1 + step / c);
    h *= d * c;
    step = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1 + m2));  // odd step
    d = 1 / guard(1 + step * d);
    c = guard(1 + step / c);
    h *= d * c;
    if (std::abs(d * c - 1) < 1e-16) {
      break;
    }
  }
  return h;
}

// I_x(a, b), the regularized incomplete beta function.
double beta_regularized(double a, double b, double x) {
  if (x <= 0) {
    return 0;
  }
  if (x >= 1) {
    return 1;
  }
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) +
                                a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) {
    return front * beta_continued_fraction(a, b, x) / a;
  }
  return 1 - front * beta_continued_fraction(b, a, 1 - x) / b;
}

}  // namespace

double stat_t_cdf(double t, double df) {
  // P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)
  const double tail = 0.5 * beta_regularized(df / 2, 0.5, df / (df + t * t));
  return t >= 0 ? 1 - tail : tail;
}

double stat_t_quantile(double p, double df) {
  check(df > 0 && p > 0 && p < 1, "stat_t_quantile: needs df > 0 and 0 < p < 1");
  if (p < 0.5) {
    return -stat_t_quantile(1 - p, df);
  }
  double hi = 1;
  while (stat_t_cdf(hi, df) < p) {
    hi *= 2;
  }
  double lo = 0;
  for (int i = 0; i < 200 && hi - lo > 1e-13 * hi; i++) {  // bisection: the CDF is monotone
    const double mid = 0.5 * (lo + hi);
    (stat_t_cdf(mid, df) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

SeedStat stat_seeds(std::span<const double> values) {
  std::vector<double> v;
  std::copy_if(values.begin(), values.end(), std::back_inserter(v),
               [](double x) { return std::isfinite(x); });
  SeedStat s;
  s.n = int64_t(v.size());
  if (v.empty()) {
    return s;
  }
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  if (v.size() < 2) {
    return s;
  }
  double squares = 0;
  for (double x : v) {
    squares += (x - s.mean) * (x - s.mean);
  }
  s.sd = std::sqrt(squares / double(v.size() - 1));
  const double half = stat_t_quantile(0.975, double(s.n - 1)) * s.sd / std::sqrt(double(s.n));
  s.ci95 = {s.mean - half, s.mean + half};
  return s;
}

PairedDiff stat_paired(const SeedValues& a, const SeedValues& b) {
  std::vector<double> diffs;
  for (const auto& [seed, x] : a) {
    const auto other = b.find(seed);
    if (other != b.end() && std::isfinite(x) && std::isfinite(other->second)) {
      diffs.push_back(x - other->second);
    }
  }
  PairedDiff d{stat_seeds(diffs), -1};
  if (d.diff.n < 2 || d.diff.mean == 0) {
    return d;
  }
  // The half-width falls with n: the least n below |mean|, by bisection over [2, 10^6].
  auto resolves = [&](int64_t n) {
    const double half = stat_t_quantile(0.975, double(n - 1)) * d.diff.sd / std::sqrt(double(n));
    return half < std::abs(d.diff.mean);
  };
  int64_t lo = 2, hi = 1000000;
  if (!resolves(hi)) {
    return d;
  }
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (resolves(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  d.seeds_needed = lo;
  return d;
}

Interval stat_proportions_diff(double pa, double na, double pb, double nb) {
  if (!(na > 0 && nb > 0) || !std::isfinite(pa) || !std::isfinite(pb)) {
    return {};
  }
  auto variance = [](double p, double n) {
    const double floor = 1 / (2 * n);
    const double q = std::clamp(p, floor, 1 - floor);
    return q * (1 - q) / n;
  };
  const double half = 1.959963984540054 * std::sqrt(variance(pa, na) + variance(pb, nb));
  return {pa - pb - half, pa - pb + half};
}

Interval stat_percentiles(std::vector<double> samples, double lower, double upper) {
  std::erase_if(samples, [](double x) { return !std::isfinite(x); });
  if (samples.empty()) {
    return {};
  }
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const double pos = q * double(samples.size() - 1);
    const size_t i = size_t(pos);
    const double frac = pos - double(i);
    return i + 1 < samples.size() ? samples[i] * (1 - frac) + samples[i + 1] * frac : samples[i];
  };
  return {at(lower), at(upper)};
}

SampleDiff stat_bootstrap_paired(std::span<const double> a, std::span<const double> b,
                                 int64_t resamples, uint64_t seed) {
  SampleDiff d;
  if (a.empty() || a.size() != b.size()) {
    return d;
  }
  const size_t n = a.size();
  std::vector<double> diff(n);
  for (size_t i = 0; i < n; i++) {
    diff[i] = a[i] - b[i];
  }
  d.n = int64_t(n);
  d.mean = std::accumulate(diff.begin(), diff.end(), 0.0) / double(n);
  std::vector<double> means(static_cast<size_t>(resamples));
  for (int64_t r = 0; r < resamples; r++) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
      sum += diff[rng_u64(seed, uint64_t(r), i) % n];
    }
    means[size_t(r)] = sum / double(n);
  }
  d.ci95 = stat_percentiles(std::move(means));
  return d;
}

std::string stat_diff_format(double mean, const Interval& ci, int digits) {
  if (!std::isfinite(ci.lo)) {
    return fmt::format("{:+.{}f}", mean, digits);
  }
  return fmt::format("{:+.{}f} [{:+.{}f}, {:+.{}f}]", mean, digits, ci.lo, digits, ci.hi, digits);
}

Comparison stat_compare(const SeedValues& a, const SeedValues& b, double na, double nb) {
  const PairedDiff paired = stat_paired(a, b);
  if (paired.diff.n >= 2) {
    return {paired.diff.mean, paired.diff.ci95, paired.diff.n, paired.seeds_needed};
  }
  std::vector<double> va, vb;
  for (const auto& [seed, x] : a) {
    va.push_back(x);
  }
  for (const auto& [seed, x] : b) {
    vb.push_back(x);
  }
  const SeedStat sa = stat_seeds(va), sb = stat_seeds(vb);
  Comparison c{sa.mean - sb.mean, {}, paired.diff.n, -1};
  if (sa.n == 1 && sb.n == 1) {
    c.ci = stat_proportions_diff(sa.mean, na, sb.mean, nb);
  }
  return c;
}

std::string stat_compare_sentence(const std::string& a, const std::string& b,
                                  const std::string& what, const Comparison& c, int digits) {
  if (!std::isfinite(c.mean)) {
    return "";
  }
  if (!std::isfinite(c.ci.lo)) {
    return fmt::format(
        "{} against {} on {}: {:+.{}f}, without an interval (one run each, or no seed in "
        "common): no difference can be resolved.",
        a, b, what, c.mean, digits);
  }
  const std::string basis = !c.basis.empty() ? c.basis
                            : c.pairs >= 2
                                ? fmt::format("95% t-interval over {} paired seeds", c.pairs)
                                : "95% interval of one evaluation set each";
  const std::string diff = stat_diff_format(c.mean, c.ci, digits);
  if (c.resolved()) {
    return fmt::format("{} is {} than {} on {} by {:.{}f} ({}: {}).", a,
                       c.mean > 0 ? "higher" : "lower", b, what, std::abs(c.mean), digits, basis,
                       diff);
  }
  std::string more;
  if (c.seeds_needed > c.pairs) {
    more = fmt::format("; at this spread about {} seeds would resolve a difference of this size",
                       c.seeds_needed);
  } else if (c.pairs < 2) {
    more = "; more seeds would give a paired interval";
  }
  return fmt::format("{} against {} on {}: no difference resolved ({}: {}){}.", a, b, what, basis,
                     diff, more);
}

}  // namespace moelab
