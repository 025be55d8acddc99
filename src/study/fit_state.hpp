#pragma once
// What `moelab fit` computes before it reports (study/fit_run.cpp fits, study/fit_report.cpp
// prints, writes and draws): the law with its bootstrap, the per-budget surfaces, the
// recommendation.
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "study/fit.hpp"
#include "study/isoflop.hpp"

namespace moelab {

struct FitState {
  FitOptions o;
  FitData data;
  Law law = Law::sparsity;
  std::vector<FitPoint> train, held;
  std::string holdout_skipped;  // why no sparsity was held out although asked (empty: it was)
  LawFit best;
  double fit_seconds = 0;
  std::vector<LawVec> boot;                 // one per bootstrap sample
  std::vector<Recommendation> boot_rec;     // with --budget
  double shared = 0.1, n_lo = 0, n_hi = 0;  // the recommendation's N range
  struct Budget {
    double c = 0;
    std::vector<FitPoint> pts;
    Surface surface;
    bool fitted = false;
    double opt_n = 0, opt_s = 0, opt_loss = 0;
  };
  std::vector<Budget> budgets;
  std::optional<Recommendation> rec;
  IsoflopAnalysis iso;  // the optima read from the runs, with the law's beside them
  // The law fitted without the largest budget, tested on it.
  struct HeldBudget {
    double budget = 0;
    int64_t fitted = 0, held = 0;
    LawError error;
    IsoflopBudget law;  // the held-out fit's optima along the held budget's curves
  };
  std::optional<HeldBudget> held_budget;
};

// fit.json's content; printed by fit_state_print; drawn into `out` by fit_state_draw.
nlohmann::ordered_json fit_state_json(const FitState& st);
void fit_state_print(const FitState& st, const nlohmann::ordered_json& j);
void fit_state_draw(const FitState& st, const std::string& out);

}  // namespace moelab
