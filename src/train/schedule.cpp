#include "train/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace moelab {

namespace {

// From max to min as t goes 0 -> 1.
double decay(double max, double min, double t, DecayShape shape) {
  t = std::clamp(t, 0.0, 1.0);
  const double f = shape == DecayShape::Cosine ? 0.5 * (1 + std::cos(std::numbers::pi * t)) : 1 - t;
  return min + (max - min) * f;
}

}  // namespace

double Schedule::lr(int64_t step) const {
  if (step < warmup_steps) return max_lr * double(step + 1) / double(warmup_steps);
  switch (kind) {
    case ScheduleKind::Constant:
      return max_lr;
    case ScheduleKind::Cosine: {
      const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps);
      return decay(max_lr, min_lr, double(step - warmup_steps) / double(span), shape);
    }
    case ScheduleKind::Wsd: {
      const int64_t start = decay_start >= 0 ? decay_start : total_steps - decay_steps;
      if (step < start) return max_lr;
      if (decay_steps <= 0) return min_lr;
      // The first decay step already moves; the last one reaches min_lr exactly.
      return decay(max_lr, min_lr, double(step - start + 1) / double(decay_steps), shape);
    }
  }
  return max_lr;
}

void Schedule::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) fail(fmt::format("{}: {}", where, msg));
  };
  need(max_lr > 0 && std::isfinite(max_lr), "'max_lr' must be positive");
  need(min_lr >= 0 && min_lr <= max_lr, "'min_lr' must be in [0, max_lr]");
  need(warmup_steps >= 0, "'warmup_steps' must be >= 0");
  if (kind == ScheduleKind::Cosine)
    need(total_steps > warmup_steps, "cosine needs 'total_steps' > 'warmup_steps'");
  if (kind == ScheduleKind::Wsd) {
    need(decay_steps >= 0, "'decay_steps' must be >= 0");
    const int64_t start = decay_start >= 0 ? decay_start : total_steps - decay_steps;
    need(start >= warmup_steps,
         fmt::format("the decay starts at step {}, before the warmup ends at {}", start,
                     warmup_steps));
  }
}

}  // namespace moelab
