#pragma once
// Comparing continual-training runs at matched learning of the new domain (methods.md §6.3):
// along each run's trajectory, the (fractional) step where its held-out loss on the new domain
// first falls to a level, and the other metrics there, so that "kept more of A" is never read at
// "learned less of B".
#include <cstdint>
#include <map>
#include <vector>

namespace moelab {

using Series = std::map<int64_t, double>;  // step -> value

// The fractional step where `x` first falls to `level` or below, linear between the two
// evaluations around the crossing (the first evaluation's step where it already is); NaN where
// it never does.
double series_step_at_level(const Series& x, double level);

// `y` at a fractional step, linear between the evaluations around it; NaN outside its steps.
double series_at_step(const Series& y, double step);

// `count` levels from `start` (the base's loss) down to `reach`, evenly spaced, the start left
// out and `reach` the last: {start - (start - reach) i / count, i = 1..count}. Empty where reach
// is not below start.
std::vector<double> matched_levels(double start, double reach, int count);

}  // namespace moelab
