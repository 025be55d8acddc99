#pragma once
// Learning-rate schedules: constant, cosine with warmup, and WSD (warmup, stable, decay to a
// minimum with a cosine or linear shape). Steps count from 0; lr(step) is the rate of that step.
#include <cstdint>
#include <string>

namespace moelab {

enum class ScheduleKind { Constant, Cosine, Wsd };
enum class DecayShape { Cosine, Linear };

struct Schedule {
  ScheduleKind kind = ScheduleKind::Wsd;
  double max_lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;  // linear from max_lr / warmup_steps to max_lr
  int64_t total_steps = 0;   // cosine: decays over [warmup, total); wsd: the run's length
  int64_t decay_steps = 0;   // wsd: length of the decay, ending at decay_start + decay_steps
  int64_t decay_start = -1;  // wsd: first decay step; -1 = total_steps - decay_steps
  DecayShape shape = DecayShape::Cosine;

  double lr(int64_t step) const;
  void validate(const std::string& where) const;  // one-line errors naming the field
};

}  // namespace moelab
