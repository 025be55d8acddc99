// Matched learning of the new domain (study/matched.hpp) on synthetic trajectories whose answers
// are known in closed form.
#include <gtest/gtest.h>

#include <cmath>

#include "study/matched.hpp"

using namespace moelab;

TEST(Matched, LinearTrajectoryGivesTheExactCrossing) {
  // B loss 5 - 0.1 s and A loss 4 + 0.01 s, evaluated every 10 steps: B = 4.45 at s = 5.5,
  // where A = 4.055.
  Series b, a;
  for (int64_t s = 0; s <= 100; s += 10) {
    b[s] = 5 - 0.1 * double(s);
    a[s] = 4 + 0.01 * double(s);
  }
  const double step = series_step_at_level(b, 4.45);
  EXPECT_NEAR(step, 5.5, 1e-12);
  EXPECT_NEAR(series_at_step(a, step), 4.055, 1e-12);
  EXPECT_DOUBLE_EQ(series_step_at_level(b, 4.0), 10.0);  // exactly on an evaluation
  EXPECT_DOUBLE_EQ(series_at_step(a, 10.0), 4.1);
  EXPECT_TRUE(std::isnan(series_step_at_level(b, -6)));  // never reached
  EXPECT_TRUE(std::isnan(series_at_step(a, 101)));       // past the last evaluation
  EXPECT_TRUE(std::isnan(series_at_step(a, -1)));        // before the first
  EXPECT_DOUBLE_EQ(series_step_at_level(b, 6), 0.0);     // already there at the start
}

TEST(Matched, FirstCrossingOfANonMonotoneTrajectory) {
  // Falls to 3 at step 20, rises to 5, falls to 2: level 4 is first reached between 10 and 20.
  const Series b = {{0, 6}, {10, 5}, {20, 3}, {30, 5}, {40, 2}};
  EXPECT_NEAR(series_step_at_level(b, 4), 15, 1e-12);
  EXPECT_NEAR(series_step_at_level(b, 2.5), 30 + 10 * (5 - 2.5) / 3, 1e-12);
  const Series with_nan = {{0, 6}, {10, NAN}, {20, 4}};
  EXPECT_NEAR(series_step_at_level(with_nan, 5), 10, 1e-12);  // the NaN evaluation is skipped
}

TEST(Matched, LevelsEndAtTheCommonReach) {
  const std::vector<double> levels = matched_levels(5.0, 4.0, 4);
  ASSERT_EQ(levels.size(), 4u);
  EXPECT_DOUBLE_EQ(levels[0], 4.75);
  EXPECT_DOUBLE_EQ(levels[1], 4.5);
  EXPECT_DOUBLE_EQ(levels[3], 4.0);
  EXPECT_TRUE(matched_levels(5.0, 5.0, 4).empty());  // a method that never improved
  EXPECT_TRUE(matched_levels(5.0, 5.2, 4).empty());
  EXPECT_TRUE(matched_levels(5.0, NAN, 4).empty());
}

// ----------------------------------------------------------------------------
// The continual-training report at matched learning, on a study folder written by hand.

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "study/ct.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// One run folder: B(s) and A(s) evaluated at steps 0, 5, 10; M_ex = 1 - a_slope * s.
void run_write(const fs::path& dir, int64_t seed, const std::function<double(double)>& b,
               const std::function<double(double)>& a) {
  fs::create_directories(dir);
  const json run = {
      {"experts", 1},      {"top_k", 1},
      {"seed", seed},      {"tokens_per_step", 64},
      {"total_steps", 10}, {"phases", {{{"name", "B"}, {"subset", "B"}, {"end_step", 10}}}}};
  std::ofstream(dir / "run.json") << run.dump();
  std::ofstream m(dir / "metrics.jsonl");
  m << json{{"step", 0},
            {"forgetting",
             {{"evalset", {{"kept", 40}, {"samples", 100}}}, {"metrics", {{"m_ex", 1.0}}}}}}
           .dump()
    << "\n";
  for (int s = 5; s <= 10; s += 5) {
    m << json{{"step", s},
              {"loss", b(s)},
              {"val_loss", {{"A", a(s)}, {"B", b(s)}}},
              {"forgetting", {{"metrics", {{"m_ex", 1.0 - (a(s) - 4.0)}}}}}}
             .dump()
      << "\n";
  }
}

json ct_study_write(const fs::path& dir, bool stuck) {
  fs::remove_all(dir);
  json methods = json::array();
  auto method = [&](const std::string& name, const std::string& kind, auto b, auto a) {
    json runs = json::array();
    for (int64_t seed = 1; seed <= 3; seed++) {
      const std::string rel = name + "/seed_" + std::to_string(seed);
      run_write(
          dir / rel, seed, [&](double s) { return b(s, seed); },
          [&](double s) { return a(s, seed); });
      runs.push_back({{"dir", rel}, {"seed", seed}});
    }
    methods.push_back({{"name", name}, {"kind", kind}, {"runs", runs}});
  };
  // full: B = 5 - 0.1 s, A = 4 + 0.01 s (+ 0.001 seed); lora learns B half as fast and its A
  // rises by 0.002 s (+ 0.002 seed): at B = 4.5, full is at step 5 (A 4.05), lora at step 10
  // (A 4.02): lora lower by 0.03 - 0.001 seed, paired differences 0.029, 0.028, 0.027.
  method(
      "full", "full", [](double s, int64_t) { return 5 - 0.1 * s; },
      [](double s, int64_t seed) { return 4 + 0.01 * s + 0.001 * double(seed); });
  method(
      "lora", "lora", [](double s, int64_t) { return 5 - 0.05 * s; },
      [](double s, int64_t seed) { return 4 + 0.002 * s + 0.002 * double(seed); });
  if (stuck) {
    method(
        "stuck", "lora", [](double s, int64_t) { return 5 + 0.01 * s; },
        [](double, int64_t) { return 4.0; });
  }
  const json ct = {{"base", "base/step_00000030"},
                   {"original", "A"},
                   {"new", "B"},
                   {"steps", 10},
                   {"base_val_loss", {{"A", 4.0}, {"B", 5.0}}},
                   {"methods", methods}};
  std::ofstream(dir / "ct.json") << ct.dump();
  return ct;
}

}  // namespace

TEST(Matched, CtReportComparesAtEqualLearningOfB) {
  const fs::path dir = fs::temp_directory_path() / "moelab_matched_ct";
  ct_study_write(dir, false);
  moelab::ct_report_write(dir.string(), (dir / "report").string(), false);
  std::ifstream in(dir / "report" / "summary.json");
  const json s = json::parse(in);
  ASSERT_EQ(s["matched_levels"].size(), 4u);
  EXPECT_NEAR(s["matched_levels"][3].get<double>(), 4.5, 1e-12);  // lora's lowest
  EXPECT_NEAR(s["matched_levels"][0].get<double>(), 4.875, 1e-12);
  const json& full = s["methods"][0]["matched"][3];
  const json& lora = s["methods"][1]["matched"][3];
  EXPECT_NEAR(full["step"]["mean"].get<double>(), 5, 1e-9);
  EXPECT_NEAR(lora["step"]["mean"].get<double>(), 10, 1e-9);
  EXPECT_NEAR(full["val_loss_original"]["mean"].get<double>(), 4.052, 1e-9);
  EXPECT_NEAR(lora["val_loss_original"]["mean"].get<double>(), 4.024, 1e-9);
  // At B = 4.875 full is at step 1.25, a quarter of the way from the base (A 4.0 at step 0)
  // to its step-5 evaluation (A 4.05 + 0.001 seed): 4.0 + 0.25 (0.05 + 0.002) = 4.013 on average.
  EXPECT_NEAR(s["methods"][0]["matched"][0]["val_loss_original"]["mean"].get<double>(), 4.013,
              1e-9);
  std::ifstream md_in(dir / "report" / "summary.md");
  const std::string md((std::istreambuf_iterator<char>(md_in)), {});
  EXPECT_NE(md.find("## At matched learning of `B`"), std::string::npos);
  EXPECT_NE(md.find("lora is lower than full on held-out A at B = 4.500 by 0.028"),
            std::string::npos)
      << md;
  fs::remove_all(dir);
}

TEST(Matched, CtReportSaysWhenNoLevelIsCommon) {
  const fs::path dir = fs::temp_directory_path() / "moelab_matched_ct_stuck";
  ct_study_write(dir, true);
  moelab::ct_report_write(dir.string(), (dir / "report").string(), false);
  std::ifstream in(dir / "report" / "summary.json");
  const json s = json::parse(in);
  EXPECT_TRUE(s["matched_levels"].empty());
  const std::string why = s["matched_none"].get<std::string>();
  EXPECT_NE(why.find("stuck/seed_1"), std::string::npos) << why;
  EXPECT_NE(why.find("no lower than 5.000"), std::string::npos) << why;
  fs::remove_all(dir);
}
