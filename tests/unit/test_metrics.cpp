// The forgetting metrics on examples with the values of the paper's worked examples (M_in 0.75
// and 0.25 on four tokens; M_ex 1, 1, 0) and on edge cases.
#include <gtest/gtest.h>

#include "eval/metrics.hpp"
#include "test_util.hpp"

using namespace moelab;
using moelab::test::error_of;

TEST(Metrics, MinWorkedExamples) {
  // Four-token continuations: 3 of 4 positions match -> 0.75; 1 of 4 -> 0.25. A match that is
  // shifted by one position does not count (position-wise comparison).
  const std::vector<int32_t> target = {11, 12, 13, 14};
  EXPECT_DOUBLE_EQ(metric_m_in(std::vector<int32_t>{11, 12, 99, 14}, target, 1, 4), 0.75);
  EXPECT_DOUBLE_EQ(metric_m_in(std::vector<int32_t>{11, 99, 98, 97}, target, 1, 4), 0.25);
  EXPECT_DOUBLE_EQ(metric_m_in(std::vector<int32_t>{0, 11, 12, 13}, target, 1, 4), 0.0);
  // Averaged over samples and positions: (3 + 1) / 8.
  EXPECT_DOUBLE_EQ(metric_m_in(std::vector<int32_t>{11, 12, 99, 14, 11, 99, 98, 97},
                               std::vector<int32_t>{11, 12, 13, 14, 11, 12, 13, 14}, 2, 4),
                   0.5);
}

TEST(Metrics, MexWorkedExamples) {
  // 1: the entity appears verbatim; 1: it appears inside a longer continuation (the leading
  // space of the entity as tokenised in running text is not required); 0: it does not appear.
  EXPECT_TRUE(metric_m_ex_hit(" Terrel Bell was the secretary of education", " Terrel Bell"));
  EXPECT_TRUE(metric_m_ex_hit("and then,Terrel Bell said", " Terrel Bell"));
  EXPECT_FALSE(metric_m_ex_hit(" Terrel went to the bell tower", " Terrel Bell"));
  EXPECT_FALSE(metric_m_ex_hit("terrel bell", "Terrel Bell")) << "case-sensitive";
  EXPECT_FALSE(metric_m_ex_hit("anything", "  ")) << "an empty entity matches nothing";
}

TEST(Metrics, TeacherForcedTop1) {
  const std::vector<float> logits = {0, 5, 1, /**/ 2, 2, 0, /**/ 9, 0, 0, /**/ 0, 0, 1};
  // argmax: 1, 0 (tie -> lower id), 0, 2; targets 1, 0, 2, ignored
  EXPECT_DOUBLE_EQ(metric_top1(logits, std::vector<int32_t>{1, 0, 2, -1}, 3), 2.0 / 3.0);
}

TEST(Metrics, MismatchedShapesAreRefusedNotRead) {
  // the metrics index by their size arguments: a mismatch is an error, never a read past the end
  const std::vector<int32_t> four = {1, 2, 3, 4};
  EXPECT_NE(error_of([&] { metric_m_in(four, std::vector<int32_t>{1, 2, 3}, 1, 4); }), "");
  EXPECT_NE(error_of([&] { metric_m_in(four, four, 2, 4); }), "");
  EXPECT_NE(error_of([&] {
              metric_top1(std::vector<float>(5), std::vector<int32_t>{0, 1}, 3);
            }),
            "");
  EXPECT_NE(error_of([&] { metric_top1({}, std::vector<int32_t>{0, 1}, 0); }), "");
  EXPECT_DOUBLE_EQ(metric_m_in({}, {}, 0, 4), 0.0);
}

TEST(Metrics, ArgmaxOverAPrefixIgnoresTheRest) {
  // greedy decoding over a padded vocabulary takes the argmax of the tokenizer's ids only
  const std::vector<float> z = {0.5f, 2.f, 1.f, 9.f, 2.f};
  EXPECT_EQ(logits_argmax(z.data(), 5), 3);
  EXPECT_EQ(logits_argmax(z.data(), 3), 1);
  EXPECT_EQ(logits_argmax(z.data(), 1), 0);
}
