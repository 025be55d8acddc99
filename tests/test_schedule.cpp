// Learning-rate schedules: values at the boundaries, continuity, and validation.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.hpp"
#include "train/schedule.hpp"

using namespace moelab;
using moelab::test::error_of;

TEST(Schedule, WarmupThenConstant) {
  Schedule s{ScheduleKind::Constant, 1e-3, 0, 10};
  EXPECT_DOUBLE_EQ(s.lr(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr(9), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(10000), 1e-3);
}

TEST(Schedule, CosineReachesMinAtTheEnd) {
  Schedule s{ScheduleKind::Cosine, 1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);
  EXPECT_NEAR(s.lr(60), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_NEAR(s.lr(110), 1e-4, 1e-15);
  EXPECT_NEAR(s.lr(500), 1e-4, 1e-15);
  for (int64_t t = 11; t < 110; t++) EXPECT_LT(s.lr(t), s.lr(t - 1));
}

TEST(Schedule, WsdLikeTheOriginalStudy) {
  // methods.md §1.3: warmup 625, stable, cosine decay over 2384 steps from 3e-4 to 3e-5.
  Schedule s{ScheduleKind::Wsd, 3e-4, 3e-5, 625, 20000, 2384};
  s.validate("schedule");
  EXPECT_NEAR(s.lr(624), 3e-4, 1e-18);
  EXPECT_DOUBLE_EQ(s.lr(625), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr(20000 - 2384 - 1), 3e-4);  // last stable step
  EXPECT_LT(s.lr(20000 - 2384), 3e-4);             // the decay starts moving at once
  EXPECT_NEAR(s.lr(20000 - 1), 3e-5, 1e-18);       // and ends at min_lr on the last step
  EXPECT_NEAR(s.lr(20000 - 2384 / 2 - 1), 0.5 * (3e-4 + 3e-5), 1e-7);
  // Largest step-to-step change is small: the schedule is continuous.
  double jump = 0;
  for (int64_t t = 1; t < 20000; t++) jump = std::max(jump, std::abs(s.lr(t) - s.lr(t - 1)));
  EXPECT_LT(jump, 3e-4 / 600);
  Schedule lin = s;
  lin.shape = DecayShape::Linear;
  EXPECT_NEAR(lin.lr(20000 - 2384 + 1191), 3e-4 - (3e-4 - 3e-5) * 1192.0 / 2384.0, 1e-15);
  Schedule at = s;  // decay placed explicitly (e.g. at the end of phase A)
  at.decay_start = 5000;
  EXPECT_DOUBLE_EQ(at.lr(4999), 3e-4);
  EXPECT_NEAR(at.lr(5000 + 2383), 3e-5, 1e-18);
  EXPECT_NEAR(at.lr(9000), 3e-5, 1e-18);
}

TEST(Schedule, ValidationNamesTheField) {
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, -1}.validate("s");
            }).find("'max_lr'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, 1e-3, 1e-2}.validate("s");
            }).find("'min_lr'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Cosine, 1e-3, 0, 10, 5}.validate("s");
            }).find("'total_steps'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, 1e-3, 0, 100, 150, 100}.validate("s");
            }).find("before the warmup ends"),
            std::string::npos);
}
