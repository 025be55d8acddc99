#pragma once
// Helpers shared by the tests: deterministic random tensors, closeness with a report of the
// worst element, and central finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moelab::test {

template <typename T = double>
std::vector<T> randn(int64_t n, uint64_t seed, double scale = 1.0) {
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) v[size_t(i)] = T(scale * rng_normal(seed, 77, uint64_t(i)));
  return v;
}

template <typename To, typename From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// max_i |a_i - b_i| / (atol + rtol |b_i|) <= 1, reporting the worst element.
template <typename A, typename B>
void expect_close(const std::vector<A>& a, const std::vector<B>& b, double rtol, double atol,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double r = std::abs(double(a[i]) - double(b[i])) / (atol + rtol * std::abs(double(b[i])));
    if (!(r <= worst)) {
      worst = r;
      at = i;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": worst element " << at << ": " << double(a[at]) << " vs "
                        << double(b[at]);
}

// Central differences of loss() with respect to x at up to max_checks indices spread over x,
// compared with the analytic gradient.
inline void expect_fd(std::vector<double>& x, const std::vector<double>& grad,
                      const std::function<double()>& loss, const std::string& what,
                      double eps = 1e-6, double rtol = 1e-5, double atol = 1e-7,
                      int64_t max_checks = 200) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  const int64_t n = int64_t(x.size());
  const int64_t stride = std::max<int64_t>(1, n / max_checks);
  double worst = 0;
  int64_t at = 0;
  double fd_at = 0;
  for (int64_t i = (n > max_checks ? 1 : 0); i < n; i += stride) {
    const double keep = x[size_t(i)];
    x[size_t(i)] = keep + eps;
    const double lp = loss();
    x[size_t(i)] = keep - eps;
    const double lm = loss();
    x[size_t(i)] = keep;
    const double fd = (lp - lm) / (2 * eps);
    const double r = std::abs(fd - grad[size_t(i)]) / (atol + rtol * std::abs(fd));
    if (!(r <= worst)) {
      worst = r;
      at = i;
      fd_at = fd;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": finite difference at " << at << " is " << fd_at
                        << ", analytic " << grad[size_t(at)];
}

// The message of the moelab::Error that f throws, or "" if it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

}  // namespace moelab::test
