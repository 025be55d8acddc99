#pragma once
// The statistics of every study report (forgetting, ct with its DeRS part, fit): per metric the
// mean, standard deviation and 95% interval of the mean from Student's t over seeds; paired
// differences between two variants over the seeds both ran, with their t-interval; an interval
// of a difference of two proportions where each variant has one seed (the recall metrics, whose
// noise is then the evaluation set's); percentile intervals of bootstrap samples. A reading states
// a direction only where the 95% interval of the difference excludes zero; otherwise it says that
// no difference was resolved and how many seeds the observed spread would need.
#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moelab {

// The p-quantile of Student's t with `df` degrees of freedom (df > 0, 0 < p < 1).
double stat_t_quantile(double p, double df);
// P(T <= t) for Student's t with `df` degrees of freedom.
double stat_t_cdf(double t, double df);

struct Interval {
  double lo = NAN, hi = NAN;
  bool excludes_zero() const { return lo > 0 || hi < 0; }
};

// Mean, sample standard deviation and the 95% t-interval of the mean of the finite values
// (n = 1: the value, sd and interval NaN; n = 0: everything NaN).
struct SeedStat {
  int64_t n = 0;
  double mean = NAN, sd = NAN;
  Interval ci95;
};
SeedStat stat_seeds(std::span<const double> values);

using SeedValues = std::map<int64_t, double>;  // seed -> one run's value (NaN: not measured)

// A minus b over the seeds both measured (finite in both): the statistic of the differences, and
// the seeds that would resolve a difference of this mean at this spread (the least n whose
// t-interval half-width t(0.975, n - 1) sd / sqrt(n) falls below |mean|; -1 where unknown: fewer
// than two pairs, or no difference at all).
struct PairedDiff {
  SeedStat diff;
  int64_t seeds_needed = -1;
  bool resolved() const { return diff.ci95.excludes_zero(); }
};
PairedDiff stat_paired(const SeedValues& a, const SeedValues& b);

// pa - pb for two proportions of one evaluation each (pa of na samples, pb of nb): the normal
// approximation's 95% interval, each variance at least that of p = 1/(2n) so that 0 and 1 do not
// claim certainty.
Interval stat_proportions_diff(double pa, double na, double pb, double nb);

// The `lower` and `upper` quantiles of samples (linear interpolation between order statistics;
// by default the central 95%); non-finite samples dropped, NaN where none is left.
Interval stat_percentiles(std::vector<double> samples, double lower = 0.025, double upper = 0.975);

// The mean of a_i - b_i over paired samples (the same evaluation samples scored by two models)
// and its bootstrap interval: `resamples` draws of the samples with replacement (counter-based,
// so the interval is a function of the data and `seed`), the 2.5% and 97.5% percentiles of the
// resampled means. Empty or unequal inputs give NaN.
struct SampleDiff {
  int64_t n = 0;
  double mean = NAN;
  Interval ci95;
};
SampleDiff stat_bootstrap_paired(std::span<const double> a, std::span<const double> b,
                                 int64_t resamples = 2000, uint64_t seed = 1);

// "+0.012 [-0.004, +0.028]": a difference and its interval, signed.
std::string stat_diff_format(double mean, const Interval& ci, int digits = 3);

// a - b on one metric: paired over the seeds both measured where there are two or more pairs;
// otherwise, for proportions of one evaluation set each (na and nb samples; NaN for any other
// metric), the proportions' interval; otherwise the difference of the means without an interval.
struct Comparison {
  double mean = NAN;
  Interval ci;
  int64_t pairs = 0;          // seeds behind a paired interval
  int64_t seeds_needed = -1;  // PairedDiff::seeds_needed
  std::string basis;          // what the interval is, where not the default wording
  bool resolved() const { return ci.excludes_zero(); }
};
Comparison stat_compare(const SeedValues& a, const SeedValues& b, double na = NAN, double nb = NAN);

// One sentence: "A is higher than B on WHAT by x (95% t-interval over 3 paired seeds: +x [lo,
// hi])." only where the interval excludes zero; otherwise "no difference resolved", with the
// seeds that would resolve one at the observed spread. Higher or lower is a direction only: the
// caller says which is better.
std::string stat_compare_sentence(const std::string& a, const std::string& b,
                                  const std::string& what, const Comparison& c, int digits = 3);

}  // namespace moelab
