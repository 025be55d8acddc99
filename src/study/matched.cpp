#include "study/matched.hpp"

#include <cmath>
#include <iterator>

namespace moelab {

double series_step_at_level(const Series& x, double level) {
  const std::pair<const int64_t, double>* before = nullptr;
  for (const auto& point : x) {
    if (!std::isfinite(point.second)) {
      continue;
    }
    if (point.second <= level) {
      if (before == nullptr) {
        return double(point.first);
      }
      // linear between (s0, x0) above the level and (s1, x1) at or below it
      const double s0 = double(before->first), x0 = before->second;
      const double s1 = double(point.first), x1 = point.second;
      return s0 + (s1 - s0) * (x0 - level) / (x0 - x1);
    }
    before = &point;
  }
  return NAN;
}

double series_at_step(const Series& y, double step) {
  if (y.empty() || !std::isfinite(step)) {
    return NAN;
  }
  const auto after = y.lower_bound(int64_t(std::ceil(step)));
  if (after == y.end()) {
    return NAN;
  }
  if (double(after->first) == step) {
    return after->second;
  }
  if (after == y.begin()) {
    return NAN;
  }
  const auto before = std::prev(after);
  const double s0 = double(before->first), s1 = double(after->first);
  return before->second + (after->second - before->second) * (step - s0) / (s1 - s0);
}

std::vector<double> matched_levels(double start, double reach, int count) {
  std::vector<double> levels;
  if (!(reach < start) || count < 1) {
    return levels;
  }
  for (int i = 1; i <= count; i++) {
    levels.push_back(i == count ? reach : start - (start - reach) * i / count);
  }
  return levels;
}

}  // namespace moelab
