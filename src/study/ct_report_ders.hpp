#pragma once
// The final-model part of the `moelab ct` report (study/ct_report_ders.cpp): size, memory, speed
// and quality of each method's final model and of each DeRS compression of one, a figure of
// quality against bytes, and a reading of what each compression cost.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

struct DersSection {
  std::string md;                    // empty when no final model was measured
  std::vector<std::string> figures;  // stems written in `out`
  nlohmann::ordered_json summary = nlohmann::ordered_json::array();
};

// From RUN/ct.json (`ct`), the runs' final_eval.json and RUN/compress/*/seed_*/eval.json.
DersSection ct_report_ders(const std::string& dir, const nlohmann::ordered_json& ct,
                           const std::string& out, bool plots);

}  // namespace moelab
