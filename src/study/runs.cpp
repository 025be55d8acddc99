#include "study/runs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "train/experiment.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ----------------------------------------------------------------------------
// reading runs

// The samples of a frozen evaluation set (its lines after the header); -1 without one.
int64_t frozen_samples(const std::string& dir) {
  std::ifstream f(fs::path(dir) / "evalset.frozen.jsonl");
  if (!f) return -1;
  int64_t lines = 0;
  std::string line;
  while (std::getline(f, line)) lines += !line.empty();
  return std::max<int64_t>(lines - 1, 0);
}

}  // namespace

RunData run_read(const std::string& dir) {
  RunData r;
  r.dir = dir;
  const std::string run_path = (fs::path(dir) / "run.json").string();
  if (!fs::exists(run_path))
    fail(run_path + ": missing (not a run folder written by moelab train)");
  r.run = json::parse(file_read(run_path), nullptr, false);
  if (r.run.is_discarded()) fail(run_path + ": invalid JSON");
  try {
    r.experts = r.run.at("experts").get<int64_t>();
    r.top_k = r.run.at("top_k").get<int64_t>();
    r.seed = r.run.at("seed").get<int64_t>();
    r.tokens_per_step = r.run.at("tokens_per_step").get<int64_t>();
    const json& ph = r.run.at("phases");
    const std::string after = r.run.value("filter_after", "");
    r.has_evalset = !after.empty();
    r.min_recalled = r.run.value("min_recalled", Experiment().min_recalled);
    for (size_t i = 0; i < ph.size(); i++) {
      if (i == 0) r.subset_a = ph[i].at("subset").get<std::string>();
      if (i == 1) r.subset_b = ph[i].at("subset").get<std::string>();
      if (ph[i].at("name").get<std::string>() == after || (after.empty() && i == 0))
        r.switch_step = ph[i].at("end_step").get<int64_t>();
    }
  } catch (const json::exception& e) {
    fail(run_path + ": " + e.what());
  }
  const std::string mpath = (fs::path(dir) / "metrics.jsonl").string();
  std::ifstream f(mpath);
  if (!f) fail(mpath + ": cannot open");
  std::string line;
  while (std::getline(f, line)) {
    const json m = json::parse(line, nullptr, false);
    if (m.is_discarded() || !m.contains("step")) {  // a line cut by a kill: skip, count
      r.bad_lines++;
      continue;
    }
    const int64_t step = m["step"].get<int64_t>();
    r.last_step = std::max(r.last_step, step);
    for (const char* k : {"loss", "lr", "tokens_per_s"})
      if (m.contains(k) && m[k].is_number()) r.s[k][step] = m[k].get<double>();
    if (m.contains("val_loss"))
      for (auto& [name, v] : m["val_loss"].items()) r.s["val:" + name][step] = v.get<double>();
    if (const auto it = m.find("expert_cosine"); it != m.end() && it->is_object()) {
      for (const auto& [key, name] :
           {std::pair{"to_dense_mean", "cos_dense"}, std::pair{"pairwise_mean", "cos_pairs"}}) {
        if (it->contains(key) && (*it)[key].is_number()) r.s[name][step] = (*it)[key].get<double>();
      }
    }
    if (m.contains("expert_load"))
      r.load[step] = m["expert_load"].get<std::vector<std::vector<double>>>();
    if (m.contains("forgetting")) {
      const json& g = m["forgetting"];
      if (g.contains("evalset")) {
        r.kept = g["evalset"].value("kept", int64_t(-1));
        r.candidates = g["evalset"].value("samples", int64_t(-1));
      }
      if (const auto it = g.find("recalled"); it != g.end() && it->is_string()) {
        r.recalled = it->get<std::string>();
      }
      if (g.contains("metrics")) {
        for (const char* k : {"m_ex", "m_in", "m_f", "ppl_ent"})
          if (g["metrics"].contains(k)) r.s[k][step] = g["metrics"][k].get<double>();
        if (const auto it = g["metrics"].find("m_ex_hits");
            it != g["metrics"].end() && it->is_string()) {
          r.m_ex_hits[step] = it->get<std::string>();
        }
      }
    }
  }
  // A run stopped at the filtering may not have logged it; its frozen set still tells.
  if (r.kept < 0) r.kept = frozen_samples(dir);
  r.failure = run_failure_read(dir);
  if (r.bad_lines)
    std::fprintf(stderr, "note: %s: skipped %ld unreadable line(s)\n", mpath.c_str(),
                 long(r.bad_lines));
  return r;
}

std::string run_stopped(const RunData& r) {
  const int64_t total = r.run.value("total_steps", int64_t(0));
  return r.last_step < total ? fmt::format("; the run stopped at step {} of {}", r.last_step, total)
                             : std::string();
}

std::string run_recall_cause(const RunData& r, const RecallWords& w) {
  if (!r.has_evalset) {
    return fmt::format("no evaluation set was given ({} entities or [eval] evalset)", w.section);
  }
  const std::string of =
      r.candidates >= 0 ? fmt::format(" of {} candidate samples", r.candidates) : "";
  if (r.kept == 0) {
    return fmt::format(
        "{} the model recalled none{} (no sample with M_ex = 1), so nothing could be forgotten "
        "and {}M_ex, M_in are undefined (n/a){}{}",
        w.when, of, w.its, run_stopped(r), w.fix_none);
  }
  if (r.kept > 0 && r.kept < r.min_recalled) {
    return fmt::format(
        "{} the model recalled only {}{} (M_ex = 1), fewer than eval.min_recalled = {}, too few "
        "to measure forgetting{}{}",
        w.when, r.kept, of, r.min_recalled, run_stopped(r), w.fix_few);
  }
  return "";
}

RunData run_failed_only(const std::string& dir, const RunFailure& f) {
  RunData r;
  r.dir = dir;
  r.failure = f;
  r.last_step = f.step;
  r.run = {{"total_steps", f.total}};
  return r;
}

Agg runs_aggregate(const std::vector<RunData>& runs, const std::string& key, int64_t from_step) {
  Agg a;
  const auto it0 = runs[0].s.find(key);
  if (it0 == runs[0].s.end()) return a;
  for (const auto& [step, v0] : it0->second) {
    if (step < from_step) continue;
    std::vector<double> vals;
    for (const RunData& r : runs) {
      const auto it = r.s.find(key);
      if (it == r.s.end() || !it->second.contains(step)) break;
      vals.push_back(it->second.at(step));
    }
    if (vals.size() != runs.size()) continue;
    a.x.push_back(double(step));
    a.mean.push_back(std::accumulate(vals.begin(), vals.end(), 0.0) / double(vals.size()));
    a.lo.push_back(*std::min_element(vals.begin(), vals.end()));
    a.hi.push_back(*std::max_element(vals.begin(), vals.end()));
  }
  return a;
}

void chart_add(PlotChart& c, const Agg& a, std::string title, int color, int dash, bool band) {
  if (a.x.empty()) {
    return;
  }
  PlotSeries s{std::move(title), a.x, a.mean, {}, {}, dash, color};
  if (band) {
    s.lo = a.lo, s.hi = a.hi;
  }
  c.series.push_back(std::move(s));
}

ojson runs_stat(const std::vector<RunData>& runs,
                const std::function<double(const RunData&)>& per_run) {
  std::vector<double> v;
  for (const RunData& r : runs) v.push_back(per_run(r));
  return values_stat(v);
}

SeedValues runs_seed_values(const std::vector<RunData>& runs,
                            const std::function<double(const RunData&)>& per_run) {
  SeedValues v;
  for (const RunData& r : runs) {
    v[r.seed] = per_run(r);
  }
  return v;
}

double run_last(const RunData& r, const std::string& key) {
  const auto it = r.s.find(key);
  return it == r.s.end() || it->second.empty() ? NAN : it->second.rbegin()->second;
}

double run_last_after(const RunData& r, const std::string& key, int64_t step) {
  const auto it = r.s.find(key);
  if (it == r.s.end() || it->second.empty() || it->second.rbegin()->first <= step) return NAN;
  return it->second.rbegin()->second;
}

double run_at(const RunData& r, const std::string& key, int64_t step) {
  const auto it = r.s.find(key);
  if (it == r.s.end() || !it->second.contains(step)) return NAN;
  return it->second.at(step);
}

double run_median_tokens_per_s(const RunData& r) {
  const auto it = r.s.find("tokens_per_s");
  if (it == r.s.end() || it->second.empty()) return NAN;
  std::vector<double> v;
  for (const auto& [step, x] : it->second) v.push_back(x);
  std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
  return v[v.size() / 2];
}

}  // namespace moelab
