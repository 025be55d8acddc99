// The reports' statistics (study/stats.hpp) against published quantiles of Student's t and
// intervals worked out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "study/stats.hpp"

using namespace moelab;

// t(0.975, df) and t(0.95, 5), as printed in standard tables (e.g. NIST/SEMATECH e-Handbook,
// table 1.3.6.7.2), to the digits given there.
TEST(Stats, StudentQuantilesMatchPublishedTables) {
  const std::vector<std::pair<double, double>> t975 = {
      {1, 12.706}, {2, 4.303},  {3, 3.182},  {4, 2.776},  {5, 2.571},
      {9, 2.262},  {10, 2.228}, {29, 2.045}, {30, 2.042}, {100, 1.984}};
  for (const auto& [df, t] : t975) {
    EXPECT_NEAR(stat_t_quantile(0.975, df), t, 5e-4) << "df " << df;
  }
  EXPECT_NEAR(stat_t_quantile(0.95, 5), 2.015, 5e-4);
  EXPECT_NEAR(stat_t_quantile(0.995, 2), 9.925, 5e-4);
  EXPECT_NEAR(stat_t_quantile(0.975, 1e7), 1.959964, 1e-5);  // the normal limit
  // df = 1 is the Cauchy distribution, whose quantile is closed-form: tan(pi (p - 1/2)).
  for (double p : {0.6, 0.9, 0.975, 0.999}) {
    const double t = std::tan(M_PI * (p - 0.5));
    EXPECT_NEAR(stat_t_quantile(p, 1), t, 1e-11 * t);
  }
  // df = 2 too: t = (2p - 1) sqrt(2 / (4 p (1 - p))).
  for (double p : {0.6, 0.9, 0.975}) {
    EXPECT_NEAR(stat_t_quantile(p, 2), (2 * p - 1) * std::sqrt(2 / (4 * p * (1 - p))), 1e-9);
  }
  EXPECT_NEAR(stat_t_quantile(0.025, 4), -stat_t_quantile(0.975, 4), 1e-12);
  EXPECT_NEAR(stat_t_cdf(stat_t_quantile(0.8, 7), 7), 0.8, 1e-12);
  EXPECT_THROW(stat_t_quantile(1.0, 3), std::exception);
  EXPECT_THROW(stat_t_quantile(0.5, 0), std::exception);
}

TEST(Stats, SeedIntervalByHand) {
  // 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), half-width t(0.975, 3) sd / 2.
  const std::vector<double> v = {1, 2, NAN, 3, 4};
  const SeedStat s = stat_seeds(v);
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_NEAR(s.sd, std::sqrt(5.0 / 3), 1e-12);
  const double half = 3.182446305284263 * std::sqrt(5.0 / 3) / 2;
  EXPECT_NEAR(s.ci95.lo, 2.5 - half, 1e-9);
  EXPECT_NEAR(s.ci95.hi, 2.5 + half, 1e-9);
  const SeedStat one = stat_seeds(std::vector<double>{0.7});
  EXPECT_EQ(one.n, 1);
  EXPECT_DOUBLE_EQ(one.mean, 0.7);
  EXPECT_TRUE(std::isnan(one.sd) && std::isnan(one.ci95.lo));
  EXPECT_EQ(stat_seeds(std::vector<double>{}).n, 0);
}

TEST(Stats, PairedDifferenceOverCommonSeeds) {
  // Seed 4 is only in a and seed 3's b is NaN: the pairs are seeds 1, 2, 5 with differences
  // 0.05, 0.03, 0.08 (mean 0.05333, sd 0.025166).
  const SeedValues a = {{1, 0.50}, {2, 0.55}, {3, 0.9}, {4, 0.1}, {5, 0.60}};
  const SeedValues b = {{1, 0.45}, {2, 0.52}, {3, NAN}, {5, 0.52}};
  const PairedDiff d = stat_paired(a, b);
  EXPECT_EQ(d.diff.n, 3);
  EXPECT_NEAR(d.diff.mean, 0.16 / 3, 1e-12);
  const double sd = std::sqrt(
      (std::pow(0.05 - 0.16 / 3, 2) + std::pow(0.03 - 0.16 / 3, 2) + std::pow(0.08 - 0.16 / 3, 2)) /
      2);
  EXPECT_NEAR(d.diff.sd, sd, 1e-12);
  EXPECT_NEAR(d.diff.ci95.hi - d.diff.mean, 4.302652729749464 * sd / std::sqrt(3.0), 1e-9);
  EXPECT_FALSE(d.resolved());  // [-0.0092, 0.1159]
  // n = 3 gives a half-width 0.0625 > 0.0533; n = 4 gives 3.1824 sd / 2 = 0.0400 < 0.0533.
  EXPECT_EQ(d.seeds_needed, 4);
  // The same differences shifted up by 0.1: resolved, and the sentence says which is higher.
  SeedValues a2 = a;
  for (auto& [seed, x] : a2) {
    x += 0.1;
  }
  const Comparison c = stat_compare(a2, b);
  EXPECT_TRUE(c.resolved());
  EXPECT_EQ(c.pairs, 3);
  const std::string up = stat_compare_sentence("MoE", "dense", "M_ex", c);
  EXPECT_NE(up.find("MoE is higher than dense on M_ex by 0.153"), std::string::npos) << up;
  const std::string none = stat_compare_sentence("MoE", "dense", "M_ex", stat_compare(a, b));
  EXPECT_NE(none.find("no difference resolved"), std::string::npos) << none;
  EXPECT_NE(none.find("about 4 seeds"), std::string::npos) << none;
  EXPECT_EQ(none.find("higher"), std::string::npos) << none;
}

TEST(Stats, OneSeedEachUsesTheEvaluationSets) {
  // 0.6 of 100 against 0.5 of 100: 0.1 +- 1.96 sqrt(0.24/100 + 0.25/100) = 0.1 +- 0.1372.
  const Interval ci = stat_proportions_diff(0.6, 100, 0.5, 100);
  EXPECT_NEAR(ci.lo, 0.1 - 1.959963984540054 * 0.07, 1e-12);
  EXPECT_NEAR(ci.hi, 0.1 + 1.959963984540054 * 0.07, 1e-12);
  const Comparison c = stat_compare({{1, 0.6}}, {{1, 0.5}}, 100, 100);
  EXPECT_EQ(c.pairs, 1);
  EXPECT_FALSE(c.resolved());
  EXPECT_TRUE(stat_compare({{1, 0.9}}, {{1, 0.5}}, 100, 100).resolved());
  // Recall of 1.0 still has a variance (that of 1 - 1/(2n)), so 1.0 against 0.99 of 50 is open.
  EXPECT_FALSE(stat_compare({{1, 1.0}}, {{1, 0.98}}, 50, 50).resolved());
  // Other metrics of one run each: the difference, no interval, never a direction.
  const Comparison loss = stat_compare({{1, 4.2}}, {{1, 4.3}});
  EXPECT_NEAR(loss.mean, -0.1, 1e-12);
  EXPECT_FALSE(loss.resolved());
  EXPECT_NE(stat_compare_sentence("a", "b", "loss", loss).find("no difference can be resolved"),
            std::string::npos);
}

TEST(Stats, PercentileInterval) {
  std::vector<double> v;
  for (int i = 100; i >= 0; i--) {
    v.push_back(i);
  }
  v.push_back(NAN);
  const Interval ci = stat_percentiles(v);
  EXPECT_NEAR(ci.lo, 2.5, 1e-12);
  EXPECT_NEAR(ci.hi, 97.5, 1e-12);
  EXPECT_TRUE(std::isnan(stat_percentiles({}).lo));
}

TEST(Stats, BootstrapOverPairedSamples) {
  // 100 samples: a recalls 60, b recalls 50 of the same ones, a's hits a superset of b's. The
  // difference is 0.1; each resampled mean is (number of a-only samples drawn) / 100, a
  // binomial(100, 0.1) / 100, whose 95% range is about [0.05, 0.16].
  std::vector<double> a(100, 0), b(100, 0);
  for (int i = 0; i < 60; i++) {
    a[size_t(i)] = 1;
  }
  for (int i = 0; i < 50; i++) {
    b[size_t(i)] = 1;
  }
  const SampleDiff d = stat_bootstrap_paired(a, b, 4000, 7);
  EXPECT_EQ(d.n, 100);
  EXPECT_DOUBLE_EQ(d.mean, 0.1);
  EXPECT_NEAR(d.ci95.lo, 0.05, 0.011);
  EXPECT_NEAR(d.ci95.hi, 0.16, 0.011);
  EXPECT_TRUE(d.ci95.excludes_zero());
  // The same seed gives the same interval; identical models give a zero-width one at 0.
  const SampleDiff again = stat_bootstrap_paired(a, b, 4000, 7);
  EXPECT_EQ(again.ci95.lo, d.ci95.lo);
  EXPECT_EQ(again.ci95.hi, d.ci95.hi);
  const SampleDiff same = stat_bootstrap_paired(a, a);
  EXPECT_EQ(same.ci95.lo, 0);
  EXPECT_EQ(same.ci95.hi, 0);
  EXPECT_FALSE(same.ci95.excludes_zero());
  EXPECT_EQ(stat_bootstrap_paired(a, std::vector<double>(3, 0)).n, 0);
}
