#include "study/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "study/ct.hpp"
#include "study/plot.hpp"
#include "train/experiment.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

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
    if (m.contains("expert_load"))
      r.load[step] = m["expert_load"].get<std::vector<std::vector<double>>>();
    if (m.contains("forgetting")) {
      const json& g = m["forgetting"];
      if (g.contains("evalset")) {
        r.kept = g["evalset"].value("kept", int64_t(-1));
        r.candidates = g["evalset"].value("samples", int64_t(-1));
      }
      if (g.contains("metrics"))
        for (const char* k : {"m_ex", "m_in", "m_f", "ppl_ent"})
          if (g["metrics"].contains(k)) r.s[k][step] = g["metrics"][k].get<double>();
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

RunData run_failed_only(const std::string& dir, const RunFailure& f) {
  RunData r;
  r.dir = dir;
  r.failure = f;
  r.last_step = f.step;
  r.run = {{"total_steps", f.total}};
  return r;
}

bool recalled_none(const ojson& kept) {
  return !kept.is_null() && stat_mean(kept) == 0 && (!kept.is_object() || kept["sd"] == 0);
}

std::string stat_format_recalled(const ojson& v, const ojson& kept, int digits) {
  return v.is_null() && recalled_none(kept) ? "n/a" : stat_format(v, digits);
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

ojson runs_stat(const std::vector<RunData>& runs,
                const std::function<double(const RunData&)>& per_run) {
  std::vector<double> v;
  for (const RunData& r : runs) v.push_back(per_run(r));
  return values_stat(v);
}

ojson values_stat(std::vector<double> v) {
  std::erase_if(v, [](double x) { return !std::isfinite(x); });
  if (v.empty()) return nullptr;
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  if (v.size() == 1) return mean;
  double ss = 0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return ojson{{"mean", mean}, {"sd", std::sqrt(ss / double(v.size() - 1))}, {"n", v.size()}};
}

double stat_mean(const ojson& v) {
  if (v.is_null()) return NAN;
  return v.is_number() ? v.get<double>() : v["mean"].get<double>();
}

double stat_std_err(const ojson& v) {
  if (!v.is_object()) return NAN;
  return v["sd"].get<double>() / std::sqrt(v["n"].get<double>());
}

std::string stat_format(const ojson& v, int digits) {
  if (v.is_null()) return "-";
  if (v.is_number() || v["sd"].get<double>() == 0)
    return fmt::format("{:.{}f}", stat_mean(v), digits);
  return fmt::format("{:.{}f} ± {:.{}f}", v["mean"].get<double>(), digits, v["sd"].get<double>(),
                     digits);
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

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

double run_median_tokens_per_s(const RunData& r) {
  const auto it = r.s.find("tokens_per_s");
  if (it == r.s.end() || it->second.empty()) return NAN;
  std::vector<double> v;
  for (const auto& [step, x] : it->second) v.push_back(x);
  std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
  return v[v.size() / 2];
}

namespace {

struct Group {
  std::string label;
  int64_t experts = 1, top_k = 1;
  std::vector<RunData> runs;
};

std::string group_label(int64_t e, int64_t k) {
  return e == 1 ? std::string("dense (E=1)") : fmt::format("MoE E={} top-{}", e, k);
}

// The runs of the given study or run folders, grouped by model (E, top-k), fewest experts first;
// the runs that failed (failed.json) apart, in `failed`.
std::vector<Group> groups_read(const std::vector<std::string>& dirs, std::vector<RunData>& failed) {
  // A study folder lists its variants; a run folder is itself one run.
  std::vector<RunData> runs;
  for (const std::string& d : dirs) {
    const fs::path study = fs::path(d) / "study.json";
    if (fs::exists(study)) {
      const json s = json::parse(file_read(study.string()), nullptr, false);
      if (s.is_discarded() || !s.contains("variants") || !s["variants"].is_array())
        fail(study.string() + ": invalid (no variants)");
      for (const json& v : s["variants"]) {
        if (!v.is_object() || !v.contains("dir") || !v["dir"].is_string())
          fail(study.string() + ": a variant without a 'dir' string");
        const fs::path rd = fs::path(d) / v["dir"].get<std::string>();
        if (!fs::exists(rd / "metrics.jsonl") || !fs::exists(rd / "run.json")) {
          if (const auto f = run_failure_read(rd.string())) {
            RunData r = run_failed_only(rd.string(), *f);
            r.experts = v.value("experts", int64_t(1));
            r.top_k = v.value("top_k", int64_t(1));
            r.seed = v.value("seed", int64_t(0));
            failed.push_back(std::move(r));
            continue;
          }
          std::fprintf(stderr, "note: %s has not started; left out\n", rd.c_str());
          continue;
        }
        runs.push_back(run_read(rd.string()));
      }
    } else if (fs::exists(fs::path(d) / "metrics.jsonl")) {
      runs.push_back(run_read(d));
    } else {
      fail(d + ": neither a study folder (study.json) nor a run folder (metrics.jsonl)");
    }
  }
  for (RunData& r : runs)
    if (r.failure) failed.push_back(std::move(r));
  std::erase_if(runs, [](const RunData& r) { return r.failure.has_value(); });
  if (runs.empty() && failed.empty()) fail("report: no run has metrics yet");
  std::vector<Group> groups;
  for (RunData& r : runs) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.experts == r.experts && g.top_k == r.top_k;
    });
    if (it == groups.end()) {
      groups.push_back({group_label(r.experts, r.top_k), r.experts, r.top_k, {}});
      it = groups.end() - 1;
    }
    it->runs.push_back(std::move(r));
  }
  std::sort(groups.begin(), groups.end(),
            [](const Group& a, const Group& b) { return a.experts < b.experts; });
  return groups;
}

// Draws every figure into out; returns their names.
std::vector<std::string> figures_draw(const std::vector<Group>& groups, const std::string& out,
                                      bool plots) {
  const RunData& first = groups[0].runs[0];
  const int64_t sw = first.switch_step;
  const std::string a_name = first.subset_a, b_name = first.subset_b;
  auto chart = [&](std::string title, std::string ylabel) {
    PlotChart c;
    c.title = std::move(title), c.ylabel = std::move(ylabel), c.xlabel = "training step";
    if (sw > 0) c.marker_x = double(sw), c.marker_label = fmt::format("{} -> {}", a_name, b_name);
    return c;
  };
  auto add = [](PlotChart& c, const Agg& a, std::string title, int color, int dash, bool band) {
    if (a.x.empty()) return;
    PlotSeries s{std::move(title), a.x, a.mean, {}, {}, dash, color};
    if (band) s.lo = a.lo, s.hi = a.hi;
    c.series.push_back(std::move(s));
  };
  std::vector<std::string> figures;
  auto draw = [&](const PlotChart& c, const std::string& stem) {
    plot_write(c, (fs::path(out) / stem).string(), plots);
    figures.push_back(stem);
  };
  for (const auto& [key, name] : {std::pair{"m_ex", "M_ex"}, std::pair{"m_in", "M_in"}}) {
    PlotChart c = chart(
        fmt::format("{} on the samples each model recalled after {} (M_ex = 1)", name, a_name),
        name);
    c.ymin = 0, c.ymax = 1.05;
    for (size_t i = 0; i < groups.size(); i++)
      add(c, runs_aggregate(groups[i].runs, key), groups[i].label, int(i), 1,
          groups[i].runs.size() > 1);
    draw(c, key);
  }
  {
    PlotChart c = chart(fmt::format("training loss (solid) and held-out loss on {} (dashed) and {} "
                                    "(dotted)",
                                    a_name, b_name),
                        "cross-entropy (nats/token)");
    for (size_t i = 0; i < groups.size(); i++) {
      add(c, runs_aggregate(groups[i].runs, "loss"), groups[i].label + " train", int(i), 1, false);
      add(c, runs_aggregate(groups[i].runs, "val:" + a_name), groups[i].label + " val " + a_name,
          int(i), 2, false);
      if (!b_name.empty())
        add(c, runs_aggregate(groups[i].runs, "val:" + b_name), groups[i].label + " val " + b_name,
            int(i), 3, false);
    }
    draw(c, "loss");
  }
  {
    PlotChart c = chart("learning rate", "learning rate");
    for (size_t i = 0; i < groups.size(); i++)
      add(c, runs_aggregate(groups[i].runs, "lr"), groups[i].label, int(i), 1, false);
    draw(c, "lr");
  }
  for (const Group& g : groups) {
    const RunData& r = g.runs[0];
    if (r.load.empty()) continue;
    PlotChart c = chart(fmt::format("{}: expert load imbalance per layer (largest expert share x "
                                    "E; 1 = balanced), seed {}",
                                    g.label, r.seed),
                        "max share x E");
    const size_t layers = r.load.begin()->second.size();
    for (size_t l = 0; l < layers; l++) {
      PlotSeries s{fmt::format("layer {}", l), {}, {}, {}, {}, 1, int(l)};
      for (const auto& [step, per_layer] : r.load) {
        if (l >= per_layer.size() || per_layer[l].empty()) continue;
        s.x.push_back(double(step));
        s.y.push_back(*std::max_element(per_layer[l].begin(), per_layer[l].end()) *
                      double(per_layer[l].size()));
      }
      c.series.push_back(std::move(s));
    }
    c.ymin = 0;
    draw(c, fmt::format("expert_load_E{}", g.experts));
  }

  return figures;
}

// The numbers per model (mean and spread over its seeds), as summary.json holds them.
ojson models_summarize(const std::vector<Group>& groups, const std::vector<RunData>& failed) {
  const std::string a_name = groups[0].runs[0].subset_a, b_name = groups[0].runs[0].subset_b;
  ojson models = ojson::array();
  for (const Group& g : groups) {
    const RunData& r0 = g.runs[0];
    ojson m;
    m["model"] = g.label;
    m["experts"] = g.experts;
    m["top_k"] = g.top_k;
    m["seeds"] = ojson::array();  // the seeds that finished: every statistic is over them
    for (const RunData& r : g.runs) m["seeds"].push_back(r.seed);
    m["seeds_failed"] = ojson::array();
    for (const RunData& r : failed)
      if (r.experts == g.experts && r.top_k == g.top_k) m["seeds_failed"].push_back(r.seed);
    m["params_total"] = r0.run.value("params_total", int64_t(0));
    m["params_active"] = r0.run.value("params_active", int64_t(0));
    m["train_flops_per_token"] = r0.run.value("train_flops_per_token", 0.0);
    m["tokens"] =
        runs_stat(g.runs, [](const RunData& r) { return double(r.last_step * r.tokens_per_step); });
    m["steps"] = runs_stat(g.runs, [](const RunData& r) { return double(r.last_step); });
    m["final_train_loss"] = runs_stat(g.runs, [](const RunData& r) { return run_last(r, "loss"); });
    for (const std::string& sub : {a_name, b_name})
      if (!sub.empty()) {
        m["val_loss_after_A"][sub] = runs_stat(
            g.runs, [&](const RunData& r) { return run_at(r, "val:" + sub, r.switch_step); });
        m["final_val_loss"][sub] =
            runs_stat(g.runs, [&](const RunData& r) { return run_last(r, "val:" + sub); });
      }
    m["evalset_candidates"] = runs_stat(
        g.runs, [](const RunData& r) { return r.candidates >= 0 ? double(r.candidates) : NAN; });
    m["evalset_kept"] =
        runs_stat(g.runs, [](const RunData& r) { return r.kept >= 0 ? double(r.kept) : NAN; });
    m["m_ex_after_A"] =
        runs_stat(g.runs, [](const RunData& r) { return run_at(r, "m_ex", r.switch_step); });
    // the lowest point of the mean M_ex curve during B
    const Agg ex = runs_aggregate(g.runs, "m_ex", r0.switch_step + 1);
    if (!ex.x.empty()) {
      const size_t i = size_t(std::min_element(ex.mean.begin(), ex.mean.end()) - ex.mean.begin());
      m["m_ex_lowest_in_B"] = ex.mean[i];
      m["m_ex_lowest_step"] = int64_t(ex.x[i]);
    } else {
      m["m_ex_lowest_in_B"] = nullptr;
      m["m_ex_lowest_step"] = nullptr;
    }
    for (const char* k : {"m_ex", "m_in", "m_f", "ppl_ent"})
      m[std::string("final_") + k] =
          runs_stat(g.runs, [&](const RunData& r) { return run_last_after(r, k, r.switch_step); });
    m["tokens_per_s"] = runs_stat(g.runs, run_median_tokens_per_s);
    models.push_back(m);
  }

  return models;
}

// The head of summary.md: the runs, what the metrics mean, and the table of numbers.
// One line per run that failed, and what that leaves the statistics of each model.
std::string failed_lines(const std::vector<RunData>& failed) {
  std::string md;
  for (const RunData& r : failed)
    md += fmt::format(
        "Failed: `{}` ({}, seed {}) {}. Left out of the table, the figures and the "
        "comparisons.\n\n",
        r.dir, group_label(r.experts, r.top_k), r.seed, run_failure_line(*r.failure));
  return md;
}

std::string markdown_table(const std::vector<Group>& groups, const ojson& models,
                           const std::vector<RunData>& failed) {
  const RunData& first = groups[0].runs[0];
  const std::string a_name = first.subset_a, b_name = first.subset_b;
  const int64_t sw = first.switch_step;
  std::string md = "# Forgetting study report\n\n";
  md += fmt::format(
      "Runs: {}. A = `{}`, B = `{}`; the switch is at step {}.\n\n",
      [&] {
        std::string s;
        for (const Group& g : groups)
          for (const RunData& r : g.runs) s += (s.empty() ? "`" : ", `") + r.dir + "`";
        return s;
      }(),
      a_name, b_name, sw);
  for (const Group& g : groups)
    for (const RunData& r : g.runs)
      if (const int64_t total = r.run.value("total_steps", int64_t(0)); r.last_step < total)
        md += fmt::format("Unfinished: `{}` is at step {} of {}; its numbers are partial.\n\n",
                          r.dir, r.last_step, total);
  md += failed_lines(failed);
  for (const ojson& m : models)
    if (const size_t nf = m["seeds_failed"].size(); nf > 0)
      md += fmt::format("The numbers of {} are over the n = {} of its {} seeds that finished.\n\n",
                        m["model"].get<std::string>(), m["seeds"].size(), m["seeds"].size() + nf);
  md +=
      "M_in: the share of the tokens after an entity (32 by default) that greedy decoding "
      "reproduces from the tokens ending with it. M_ex: whether greedy decoding from the tokens "
      "before an entity writes the entity. Both are measured on the samples each model "
      "recalled right after A (M_ex = 1 then, by construction).\n\n";
  md += "| | ";
  for (const Group& g : groups) md += g.label + " | ";
  md += "\n|---|";
  for (size_t i = 0; i < groups.size(); i++) md += "---|";
  md += "\n";
  auto row = [&](const std::string& name, auto cell) {
    md += "| " + name + " | ";
    for (const ojson& m : models) md += cell(m) + " | ";
    md += "\n";
  };
  row("total params", [](const ojson& m) { return human_count(m["params_total"].get<double>()); });
  row("active params",
      [](const ojson& m) { return human_count(m["params_active"].get<double>()); });
  row("train FLOPs/token",
      [](const ojson& m) { return human_count(m["train_flops_per_token"].get<double>()); });
  row("seeds", [](const ojson& m) {
    const size_t nf = m["seeds_failed"].size();
    return nf == 0 ? m["seeds"].dump()
                   : fmt::format("{} (n = {}; {} failed)", m["seeds"].dump(), m["seeds"].size(),
                                 m["seeds_failed"].dump());
  });
  row("tokens trained", [](const ojson& m) { return human_count(stat_mean(m["tokens"])); });
  row("final train loss", [](const ojson& m) { return stat_format(m["final_train_loss"]); });
  for (const std::string& sub : {a_name, b_name})
    if (!sub.empty()) {
      row("val loss " + sub + " after A",
          [&](const ojson& m) { return stat_format(m["val_loss_after_A"][sub]); });
      row("val loss " + sub + " at the end",
          [&](const ojson& m) { return stat_format(m["final_val_loss"][sub]); });
    }
  row("M_ex = 1 samples after A (of candidates)", [](const ojson& m) {
    return fmt::format("{} of {}", stat_format(m["evalset_kept"], 0),
                       stat_format(m["evalset_candidates"], 0));
  });
  // Where a model recalled none of the samples after A its forgetting metrics are undefined.
  auto forgetting = [](const char* key, int digits = 3) {
    return [key, digits](const ojson& m) {
      return stat_format_recalled(m[key], m["evalset_kept"], digits);
    };
  };
  row("M_ex right after A", forgetting("m_ex_after_A"));
  row("lowest M_ex in B (step)", [](const ojson& m) {
    return m["m_ex_lowest_in_B"].is_null()
               ? std::string(recalled_none(m["evalset_kept"]) ? "n/a" : "-")
               : fmt::format("{:.3f} ({})", m["m_ex_lowest_in_B"].get<double>(),
                             m["m_ex_lowest_step"].get<int64_t>());
  });
  row("M_ex at the end", forgetting("final_m_ex"));
  row("M_in at the end", forgetting("final_m_in"));
  row("M(f) at the end", forgetting("final_m_f"));
  row("PPL_ent at the end", forgetting("final_ppl_ent", 2));
  row("tokens/s (median)", [](const ojson& m) { return stat_format(m["tokens_per_s"], 0); });

  return md;
}

// Why a run logged no forgetting metrics, read from its folder: no evaluation set, a set whose
// M_ex = 1 part after A was empty or too small (the trainer stops there), or a run that has not
// reached the filtering yet.
std::string forgetting_missing_cause(const RunData& r) {
  const std::string& a = r.subset_a;
  if (!r.has_evalset) return "no evaluation set was given ([study] entities or [eval] evalset)";
  const std::string of =
      r.candidates >= 0 ? fmt::format(" of {} candidate samples", r.candidates) : "";
  const std::string fix =
      "; a larger or easier candidate set ([study] max_samples, max_per_entity, top, bottom) or "
      "a longer A gives the model more to recall";
  if (r.kept == 0)
    return fmt::format(
        "after {} the model recalled none{} (no sample with M_ex = 1), so nothing could be "
        "forgotten and its M_ex, M_in are undefined (n/a){}{}",
        a, of, run_stopped(r), fix);
  if (r.kept > 0 && r.kept < r.min_recalled)
    return fmt::format(
        "after {} the model recalled only {}{} (M_ex = 1), fewer than eval.min_recalled = {}, "
        "too few to measure forgetting{}{}",
        a, r.kept, of, r.min_recalled, run_stopped(r), fix);
  if (r.last_step <= r.switch_step)
    return fmt::format(
        "{} has not started: the run is at step {} and {} ends at step {}{}; run "
        "the study again to continue it",
        r.subset_b.empty() ? "B" : r.subset_b, r.last_step, a, r.switch_step,
        r.kept > 0 ? fmt::format(" ({}{} recalled after {})", r.kept, of, a) : "");
  return fmt::format(
      "the run passed the end of {} (step {}) without a record of the evaluation set's filtering "
      "(a metrics.jsonl from an older moelab?)",
      a, r.switch_step);
}

// A plain reading of the numbers that claims no more than their noise supports.
std::string reading_write(const std::vector<Group>& groups, const ojson& models) {
  const std::string a_name = groups[0].runs[0].subset_a;
  std::string md;
  md += "\n## Reading\n\n";
  std::vector<std::pair<double, std::string>> end_ex;
  for (size_t i = 0; i < groups.size(); i++)
    if (const double v = stat_mean(models[i]["final_m_ex"]); std::isfinite(v))
      end_ex.push_back({v, groups[i].label});
  if (end_ex.empty()) {
    md += "No forgetting metrics were logged:\n\n";
    for (const Group& g : groups)
      for (const RunData& r : g.runs)
        md += fmt::format("- `{}`: {}.\n", r.dir, forgetting_missing_cause(r));
  } else {
    for (size_t i = 0; i < groups.size(); i++)
      if (models[i]["final_m_ex"].is_null())
        for (const RunData& r : groups[i].runs)
          md += fmt::format("- No forgetting metrics for `{}`: {}.\n", r.dir,
                            forgetting_missing_cause(r));
    std::string list;
    for (size_t i = 0; i < groups.size(); i++) {
      const ojson& m = models[i];
      if (m["final_m_ex"].is_null()) continue;
      list += fmt::format(
          "{}{}: {} at the end (lowest {:.3f} at step {})", list.empty() ? "" : "; ",
          groups[i].label, stat_format(m["final_m_ex"]),
          m["m_ex_lowest_in_B"].is_null() ? NAN : m["m_ex_lowest_in_B"].get<double>(),
          m["m_ex_lowest_step"].is_null() ? int64_t(-1) : m["m_ex_lowest_step"].get<int64_t>());
    }
    md += "- M_ex during B, from 1.0 right after A: " + list + ".\n";
    // Is a gap in M_ex at the end larger than its noise? One seed: the binomial standard error
    // of the frozen set, sqrt(p(1 - p) / n); several: the seeds' sd / sqrt(seeds).
    auto std_err = [&](size_t i) {
      const ojson& m = models[i]["final_m_ex"];
      if (m.is_object()) return m["sd"].get<double>() / std::sqrt(m["n"].get<double>());
      const double p = stat_mean(m), n = stat_mean(models[i]["evalset_kept"]);
      return n > 0 ? std::sqrt(std::max(p * (1 - p), 0.25 / n) / n) : NAN;
    };
    const bool single_seed = std::all_of(groups.begin(), groups.end(),
                                         [](const Group& g) { return g.runs.size() == 1; });
    bool up = true, down = true, clear = true;
    double noise = 0;
    for (size_t i = 1; i < groups.size(); i++) {
      const double a = stat_mean(models[i - 1]["final_m_ex"]),
                   b = stat_mean(models[i]["final_m_ex"]);
      const double two_se = 2 * std::hypot(std_err(i - 1), std_err(i));
      up = up && b > a, down = down && b < a;
      clear = clear && std::abs(b - a) > two_se;
      noise = std::max(noise, two_se);
    }
    const std::string within = fmt::format(
        "the gaps are within two standard errors of the evaluation's sampling noise (about "
        "±{:.3f}), so this run does not rank the models: more seeds (`moelab run --seeds 1,2,3`) "
        "or a larger evaluation set would",
        noise);
    if (groups.size() < 2)
      md += "- One model only: nothing to compare.\n";
    else if ((up || down) && clear)
      md += fmt::format(
          "- {}; each gap exceeds two standard errors ({}).\n",
          up ? "More experts kept more of what A taught, as the original study found"
             : "Fewer experts kept more, the opposite of the original study's finding",
          single_seed ? "binomial, of one seed's evaluation set"
                      : "of the mean over the seeds; with few seeds this is suggestive, not proof");
    else if (up || down)
      md += fmt::format("- M_ex at the end {} with the number of experts, but {}.\n",
                        up ? "rises" : "falls", within);
    else
      md += fmt::format("- M_ex at the end is not ordered by the number of experts; {}.\n", within);
    if (!single_seed)
      md += "- The bands in the figures span the seeds (min to max); the table gives mean ± sd.\n";
    md +=
        "- M_in stays low next to M_ex (it asks for the exact 32 tokens); the original study "
        "also found it too noisy to rank models.\n";
    int fell = 0, known = 0;
    for (size_t i = 0; i < groups.size(); i++) {
      const double a = stat_mean(models[i]["val_loss_after_A"][a_name]),
                   b = stat_mean(models[i]["final_val_loss"][a_name]);
      if (!std::isfinite(a) || !std::isfinite(b)) continue;
      known++, fell += b < a;
      md += fmt::format(
          "- {}: held-out loss on {} went from {:.3f} after A to {:.3f} at the end "
          "(PPL {:.1f} -> {:.1f}).\n",
          groups[i].label, a_name, a, b, std::exp(a), std::exp(b));
    }
    if (known > 0 && fell == known)
      md += fmt::format(
          "- PPL on {} fell during B while M_ex fell too: perplexity does not show "
          "this forgetting (the original's first finding).\n",
          a_name);
  }
  return md;
}

}  // namespace

// ----------------------------------------------------------------------------

std::string report_write(const ReportOptions& o) {
  if (o.dirs.empty()) fail("report: no run or study folder given");
  for (const std::string& d : o.dirs)
    if (fs::exists(fs::path(d) / "ct.json")) {
      if (o.dirs.size() > 1)
        fail(d + ": a continual-training folder (ct.json) is reported on its own");
      return ct_report_write(d, o.out, o.plots);
    }
  std::vector<RunData> failed;
  const std::vector<Group> groups = groups_read(o.dirs, failed);
  const std::string out = o.out.empty() ? (fs::path(o.dirs[0]) / "report").string() : o.out;
  fs::create_directories(out);
  ojson failed_json = ojson::array();
  for (const RunData& r : failed)
    failed_json.push_back({{"dir", r.dir},
                           {"experts", r.experts},
                           {"top_k", r.top_k},
                           {"seed", r.seed},
                           {"step", r.failure->step},
                           {"total_steps", r.failure->total},
                           {"nonfinite", r.failure->nonfinite},
                           {"reason", r.failure->reason}});
  std::string md;
  ojson summary;
  if (groups.empty()) {  // every run failed: what stopped each, and nothing to compare
    md = "# Forgetting study report\n\n" + failed_lines(failed) +
         "No run finished: there is nothing to measure or compare.\n";
    summary = {{"models", ojson::array()}, {"failed", failed_json}, {"figures", ojson::array()}};
  } else {
    const RunData& first = groups[0].runs[0];
    const std::vector<std::string> figures = figures_draw(groups, out, o.plots);
    const ojson models = models_summarize(groups, failed);
    md = markdown_table(groups, models, failed) + reading_write(groups, models);
    md += "\n## Figures\n\n";
    for (const std::string& f : figures) md += fmt::format("![{0}]({0}.png)\n\n", f);
    md += "Each figure also exists as SVG, and as the gnuplot script that draws it (`NAME.gp`).\n";
    summary = {{"a", first.subset_a}, {"b", first.subset_b},   {"switch_step", first.switch_step},
               {"models", models},    {"failed", failed_json}, {"figures", figures}};
  }
  file_write_atomic((fs::path(out) / "summary.json").string(), summary.dump(2) + "\n");
  const std::string md_path = (fs::path(out) / "summary.md").string();
  file_write_atomic(md_path, md);
  std::fprintf(stderr, "report: %s\n", md_path.c_str());
  return md_path;
}

}  // namespace moelab
