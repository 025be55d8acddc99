#include "study/report.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <tuple>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "study/ct.hpp"
#include "study/study_page.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Group {
  std::string label;
  int64_t experts = 1, top_k = 1;
  int64_t matches = 0;  // a dense control: the E of the MoE variant it matches
  std::vector<RunData> runs;
};

// The study's name for the run's variant, or one from its experts and top-k.
std::string run_label(const RunData& r) {
  if (!r.variant.empty()) {
    return r.variant;
  }
  return r.experts == 1 ? std::string("dense (E=1)")
                        : fmt::format("MoE E={} top-{}", r.experts, r.top_k);
}

// The samples every run recalled after A (each run's M_ex = 1 set, from the per-candidate record
// of its filtering): the models compared on the same samples. Over all runs the set shrinks with
// every seed, so each seed also has its own: the samples every model of that seed recalled,
// which the paired comparisons over seeds use (a pair is always scored on one set).
struct SharedSet {
  std::string mask;  // per candidate, '1' where every run kept it
  int64_t size = 0;
  std::map<int64_t, std::string> by_seed;  // per seed, '1' where every run of that seed kept it
  std::string why;                         // why there is none ("" where there is)

  const std::string& mask_of(const RunData& r) const {
    const auto it = by_seed.find(r.seed);
    return it == by_seed.end() ? mask : it->second;
  }
  // per seed, the number of samples its models share
  std::map<int64_t, int64_t> seed_counts() const {
    std::map<int64_t, int64_t> counts;
    for (const auto& [seed, m] : by_seed) {
      counts[seed] = std::count(m.begin(), m.end(), '1');
    }
    return counts;
  }
  // "13 / 20 / 9" (per seed, in seed order)
  std::string seed_sizes() const {
    std::vector<int64_t> sizes;
    for (const auto& [seed, n] : seed_counts()) {
      sizes.push_back(n);
    }
    return fmt::format("{}", fmt::join(sizes, " / "));
  }
};

void mask_intersect(std::string& mask, const std::string& recalled) {
  if (mask.empty()) {
    mask = recalled;
  }
  for (size_t c = 0; c < recalled.size(); c++) {
    mask[c] = mask[c] == '1' && recalled[c] == '1' ? '1' : '0';
  }
}

ojson shared_sizes_json(const SharedSet& shared) {
  ojson sizes = ojson::object();
  for (const auto& [seed, n] : shared.seed_counts()) {
    sizes[std::to_string(seed)] = n;
  }
  return sizes;
}

SharedSet shared_set(const std::vector<Group>& groups) {
  SharedSet shared;
  for (const Group& g : groups) {
    for (const RunData& r : g.runs) {
      if (r.recalled.empty()) {
        shared.why = fmt::format("`{}` has no per-sample record of its filtering", r.dir);
        return shared;
      }
      if (!shared.mask.empty() && shared.mask.size() != r.recalled.size()) {
        shared.why = "the runs filtered different candidate sets";
        return shared;
      }
      mask_intersect(shared.mask, r.recalled);
      mask_intersect(shared.by_seed[r.seed], r.recalled);
    }
  }
  shared.size = std::count(shared.mask.begin(), shared.mask.end(), '1');
  return shared;
}

// A run's M_ex (1 or 0) on each shared sample at its last evaluation after A; empty where that
// evaluation has no per-sample record.
std::vector<double> shared_hits(const RunData& r, const std::string& mask) {
  const auto last = r.m_ex_hits.empty() ? r.m_ex_hits.end() : std::prev(r.m_ex_hits.end());
  const int64_t kept = std::count(r.recalled.begin(), r.recalled.end(), '1');
  if (last == r.m_ex_hits.end() || last->first <= r.switch_step ||
      int64_t(last->second.size()) != kept || r.recalled.size() != mask.size()) {
    return {};
  }
  std::vector<double> hits;
  size_t at = 0;  // the position in the run's own (frozen) set
  for (size_t c = 0; c < mask.size(); c++) {
    if (r.recalled[c] != '1') {
      continue;
    }
    if (mask[c] == '1') {
      hits.push_back(last->second[at] == '1' ? 1 : 0);
    }
    at++;
  }
  return hits;
}

double shared_m_ex(const RunData& r, const std::string& mask) {
  const std::vector<double> hits = shared_hits(r, mask);
  return hits.empty() ? NAN : std::accumulate(hits.begin(), hits.end(), 0.0) / double(hits.size());
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
            r.variant = v.value("label", "");
            failed.push_back(std::move(r));
            continue;
          }
          std::fprintf(stderr, "note: %s has not started; left out\n", rd.c_str());
          continue;
        }
        runs.push_back(run_read(rd.string()));
        runs.back().variant = v.value("label", "");
        runs.back().matches = v.value("matches", int64_t(0));
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
    const std::string label = run_label(r);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.label == label; });
    if (it == groups.end()) {
      groups.push_back({label, r.experts, r.top_k, r.matches, {}});
      it = groups.end() - 1;
    }
    it->runs.push_back(std::move(r));
  }
  // the dense base, its controls (by the E they match), then the MoE variants
  std::sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) {
    return std::tuple(a.experts, a.matches) < std::tuple(b.experts, b.matches);
  });
  return groups;
}

// Draws every figure into out; returns their names.
std::vector<std::string> figures_draw(const std::vector<Group>& groups, const std::string& out,
                                      bool plots) {
  const RunData& first = groups[0].runs[0];
  const int64_t sw = first.switch_step;
  const std::string a_name = first.subset_a, b_name = first.subset_b;
  auto chart = [&](std::string title, std::string ylabel) {
    PlotChart c{std::move(title), "training step", std::move(ylabel)};
    if (sw > 0) c.marker_x = double(sw), c.marker_label = fmt::format("{} -> {}", a_name, b_name);
    return c;
  };
  Figures figures{out, plots, {}};
  for (const auto& [key, name] : {std::pair{"m_ex", "M_ex"}, std::pair{"m_in", "M_in"}}) {
    PlotChart c = chart(
        fmt::format("{} on the samples each model recalled after {} (M_ex = 1)", name, a_name),
        name);
    c.ymin = 0, c.ymax = 1.05;
    for (size_t i = 0; i < groups.size(); i++)
      chart_add(c, runs_aggregate(groups[i].runs, key), groups[i].label, int(i), 1,
                groups[i].runs.size() > 1);
    figures.draw(c, key);
  }
  {
    PlotChart c = chart(fmt::format("training loss (solid) and held-out loss on {} (dashed) and {} "
                                    "(dotted)",
                                    a_name, b_name),
                        "cross-entropy (nats/token)");
    for (size_t i = 0; i < groups.size(); i++) {
      chart_add(c, runs_aggregate(groups[i].runs, "loss"), groups[i].label + " train", int(i), 1,
                false);
      chart_add(c, runs_aggregate(groups[i].runs, "val:" + a_name),
                groups[i].label + " val " + a_name, int(i), 2, false);
      if (!b_name.empty())
        chart_add(c, runs_aggregate(groups[i].runs, "val:" + b_name),
                  groups[i].label + " val " + b_name, int(i), 3, false);
    }
    figures.draw(c, "loss");
  }
  if (!b_name.empty()) {
    // M_ex against what was learned of B: a model that "forgets less" only because it learned
    // less sits to the right of the others.
    PlotChart c{fmt::format("M_ex during {} against held-out loss on {} (lower right: forgot "
                            "less, learned less)",
                            b_name, b_name),
                fmt::format("held-out loss on {} (nats/token)", b_name), "M_ex"};
    c.ymin = 0, c.ymax = 1.05;
    for (size_t i = 0; i < groups.size(); i++) {
      const Agg b = runs_aggregate(groups[i].runs, "val:" + b_name, sw),
                ex = runs_aggregate(groups[i].runs, "m_ex", sw);
      PlotSeries s{groups[i].label, {}, {}, {}, {}, 1, int(i), true};
      for (size_t j = 0; j < b.x.size(); j++) {
        const auto k = std::find(ex.x.begin(), ex.x.end(), b.x[j]);
        if (k != ex.x.end()) {
          s.x.push_back(b.mean[j]);
          s.y.push_back(ex.mean[size_t(k - ex.x.begin())]);
        }
      }
      if (!s.x.empty()) {
        c.series.push_back(std::move(s));
      }
    }
    figures.draw(c, "m_ex_vs_b");
  }
  {
    PlotChart c = chart("learning rate", "learning rate");
    for (size_t i = 0; i < groups.size(); i++)
      chart_add(c, runs_aggregate(groups[i].runs, "lr"), groups[i].label, int(i), 1, false);
    figures.draw(c, "lr");
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
    figures.draw(c, fmt::format("expert_load_E{}", g.experts));
  }
  return figures.stems;
}

// The numbers per model (mean and spread over its seeds), as summary.json holds them.
ojson models_summarize(const std::vector<Group>& groups, const std::vector<RunData>& failed,
                       const SharedSet& shared) {
  const std::string a_name = groups[0].runs[0].subset_a, b_name = groups[0].runs[0].subset_b;
  ojson models = ojson::array();
  for (const Group& g : groups) {
    const RunData& r0 = g.runs[0];
    ojson m;
    m["model"] = g.label;
    m["experts"] = g.experts;
    m["top_k"] = g.top_k;
    m["matches"] = g.matches;
    m["seeds"] = ojson::array();  // the seeds that finished: every statistic is over them
    for (const RunData& r : g.runs) m["seeds"].push_back(r.seed);
    m["seeds_failed"] = ojson::array();
    for (const RunData& r : failed)
      if (run_label(r) == g.label) m["seeds_failed"].push_back(r.seed);
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
    m["final_m_ex_shared"] =
        runs_stat(g.runs, [&](const RunData& r) { return shared_m_ex(r, shared.mask); });
    m["final_m_ex_seed_shared"] =
        runs_stat(g.runs, [&](const RunData& r) { return shared_m_ex(r, shared.mask_of(r)); });
    m["tokens_per_s"] = runs_stat(g.runs, run_median_tokens_per_s);
    models.push_back(m);
  }

  return models;
}

// One line per run that failed, and what that leaves the statistics of each model.
std::string failed_lines(const std::vector<RunData>& failed) {
  std::string md;
  for (const RunData& r : failed)
    md += fmt::format(
        "Failed: `{}` ({}, seed {}) {}. Left out of the table, the figures and the "
        "comparisons.\n\n",
        r.dir, run_label(r), r.seed, run_failure_line(*r.failure));
  return md;
}

// summary.md: the runs, what the metrics mean, the table of numbers, the reading, the figures.
std::string markdown_write(const std::vector<Group>& groups, const ojson& models,
                           const SharedSet& shared, const std::vector<RunData>& failed,
                           const std::string& reading, const std::vector<std::string>& figures) {
  const RunData& first = groups[0].runs[0];
  const std::string a_name = first.subset_a, b_name = first.subset_b;
  std::vector<std::string> runs;
  std::string notes;
  for (const Group& g : groups) {
    for (const RunData& r : g.runs) {
      runs.push_back("`" + r.dir + "`");
      if (const int64_t total = r.run.value("total_steps", int64_t(0)); r.last_step < total) {
        notes += fmt::format("Unfinished: `{}` is at step {} of {}; its numbers are partial.\n\n",
                             r.dir, r.last_step, total);
      }
    }
  }
  notes += failed_lines(failed);
  for (const ojson& m : models) {
    if (const size_t nf = m["seeds_failed"].size(); nf > 0) {
      notes +=
          fmt::format("The numbers of {} are over the n = {} of its {} seeds that finished.\n\n",
                      m["model"].get<std::string>(), m["seeds"].size(), m["seeds"].size() + nf);
    }
  }
  MdColumns table(models, [](const ojson& m) { return m["model"].get<std::string>(); });
  table.row_count("total params", "params_total");
  table.row_count("active params", "params_active");
  table.row_count("train FLOPs/token", "train_flops_per_token");
  table.row("seeds", [](const ojson& m) {
    return seeds_cell(m["seeds"], m["seeds_failed"].dump(), m["seeds_failed"].size());
  });
  table.row_count("tokens trained", "tokens");
  table.row_stat("final train loss", "final_train_loss");
  for (const std::string& sub : {a_name, b_name}) {
    if (!sub.empty()) {
      table.row("val loss " + sub + " after A",
                [&](const ojson& m) { return stat_format(m["val_loss_after_A"][sub]); });
      table.row("val loss " + sub + " at the end",
                [&](const ojson& m) { return stat_format(m["final_val_loss"][sub]); });
    }
  }
  table.row_kept("M_ex = 1 samples after A (of candidates)");
  // Where a model recalled none of the samples after A its forgetting metrics are undefined.
  table.row_recalled("M_ex right after A", "m_ex_after_A");
  table.row("lowest M_ex in B (step)", [](const ojson& m) {
    return m["m_ex_lowest_in_B"].is_null()
               ? std::string(recalled_none(m["evalset_kept"]) ? "n/a" : "-")
               : fmt::format("{:.3f} ({})", m["m_ex_lowest_in_B"].get<double>(),
                             m["m_ex_lowest_step"].get<int64_t>());
  });
  table.row_recalled("M_ex at the end", "final_m_ex");
  if (shared.size > 0) {
    table.row_stat(fmt::format("M_ex at the end, on the {} samples all recalled", shared.size),
                   "final_m_ex_shared");
  }
  if (shared.by_seed.size() > 1) {
    table.row_stat(fmt::format("M_ex at the end, on the samples all of its seed recalled ({})",
                               shared.seed_sizes()),
                   "final_m_ex_seed_shared");
  }
  table.row_recalled("M_in at the end", "final_m_in");
  table.row_recalled("M(f) at the end", "final_m_f");
  table.row_recalled("PPL_ent at the end", "final_ppl_ent", 2);
  table.row_stat("tokens/s (median)", "tokens_per_s", 0);
  return template_render("forgetting.md", {{"runs", list_join(runs)},
                                           {"a", a_name},
                                           {"b", b_name},
                                           {"switch", fmt::format("{}", first.switch_step)},
                                           {"notes", notes},
                                           {"table", table.md()},
                                           {"reading", reading},
                                           {"images", md_images(figures)}});
}

// Why a run logged no forgetting metrics, read from its folder: no evaluation set, a set whose
// M_ex = 1 part after A was empty or too small (the trainer stops there), or a run that has not
// reached the filtering yet.
std::string forgetting_missing_cause(const RunData& r) {
  const std::string& a = r.subset_a;
  const std::string fix =
      "; a larger or easier candidate set ([study] max_samples, max_per_entity, top, bottom) or "
      "a longer A gives the model more to recall";
  const std::string cause = run_recall_cause(r, {"[study]", "after " + a, "its ", fix, fix});
  if (!cause.empty()) {
    return cause;
  }
  const std::string of =
      r.candidates >= 0 ? fmt::format(" of {} candidate samples", r.candidates) : "";
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

// Group a against group b on M_ex at the end, on their own recalled sets and on the shared one:
// paired over seeds (the same seed is the same data order); with one seed each, the recalled
// sets' interval of two proportions (own sets) or a bootstrap over the shared samples, which both
// models scored. Returns the comparison that decides (the shared set's, where there is one).
Comparison compare_groups(const Group& a, const Group& b, const ojson& ma, const ojson& mb,
                          const SharedSet& shared, std::string& md) {
  auto own = [](const RunData& r) { return run_last_after(r, "m_ex", r.switch_step); };
  const Comparison c = stat_compare(runs_seed_values(a.runs, own), runs_seed_values(b.runs, own),
                                    stat_mean(ma["evalset_kept"]), stat_mean(mb["evalset_kept"]));
  md += "- " + stat_compare_sentence(a.label, b.label, "M_ex at the end (own sets)", c);
  if (shared.mask.empty()) {
    md += "\n";
    return c;
  }
  // Over seeds: each seed's pair scored on the samples every model of that seed recalled.
  auto on_shared = [&](const RunData& r) { return shared_m_ex(r, shared.mask_of(r)); };
  Comparison cs =
      stat_compare(runs_seed_values(a.runs, on_shared), runs_seed_values(b.runs, on_shared));
  std::string what = fmt::format(
      "M_ex at the end on the samples all models of a seed recalled ({})", shared.seed_sizes());
  if (cs.pairs < 2) {
    const std::string& mask =
        a.runs[0].seed == b.runs[0].seed ? shared.mask_of(a.runs[0]) : shared.mask;
    const SampleDiff d =
        stat_bootstrap_paired(shared_hits(a.runs[0], mask), shared_hits(b.runs[0], mask));
    cs = {d.mean, d.ci95, 1, -1,
          fmt::format("95% bootstrap interval over the {} samples both scored", d.n)};
    what = fmt::format("M_ex at the end on the {} shared samples", d.n);
  }
  if (!std::isfinite(cs.mean)) {
    md += "\n";
    return c;
  }
  md += " " + stat_compare_sentence(a.label, b.label, what, cs) + "\n";
  return cs;
}

// Each iso-total model against the one with the next fewer experts, then each MoE model against
// its dense control of equal active parameters; the direction where every step of the chain is
// resolved.
std::string comparisons_write(const std::vector<Group>& groups, const ojson& models,
                              const SharedSet& shared) {
  std::vector<size_t> chain;  // the dense base and the MoE variants, fewest experts first
  for (size_t i = 0; i < groups.size(); i++) {
    if (groups[i].matches == 0) {
      chain.push_back(i);
    }
  }
  std::string md;
  size_t higher = 0, lower = 0;
  for (size_t j = 1; j < chain.size(); j++) {
    const size_t i = chain[j], prev = chain[j - 1];
    const Comparison c =
        compare_groups(groups[i], groups[prev], models[i], models[prev], shared, md);
    higher += c.resolved() && c.mean > 0;
    lower += c.resolved() && c.mean < 0;
  }
  for (size_t i = 0; i < groups.size(); i++) {
    for (size_t control = 0; control < groups.size() && groups[i].experts > 1; control++) {
      if (groups[control].matches == groups[i].experts) {
        compare_groups(groups[i], groups[control], models[i], models[control], shared, md);
      }
    }
  }
  if (std::all_of(groups.begin(), groups.end(),
                  [](const Group& g) { return g.runs.size() == 1; }) &&
      groups.size() > 1) {
    md +=
        "- With one seed per model these intervals hold the evaluation samples' noise only, not "
        "the spread between seeds (another seed can order the models differently); several seeds "
        "give paired t-intervals.\n";
  }
  if (chain.size() < 2) {
    return md + "- One iso-total model only: no order by the number of experts to read.\n";
  }
  if (higher == chain.size() - 1) {
    return md + "- More experts kept more of what A taught, as the original study found.\n";
  }
  if (lower == chain.size() - 1) {
    return md + "- Fewer experts kept more, the opposite of the original study's finding.\n";
  }
  return md +
         "- This run does not order the models by M_ex at the end: a direction is stated only "
         "where the 95% interval of the difference excludes zero.\n";
}

// A plain reading of the numbers that claims no more than their noise supports.
std::string reading_write(const std::vector<Group>& groups, const ojson& models,
                          const SharedSet& shared) {
  const std::string a_name = groups[0].runs[0].subset_a;
  std::string md;
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
    md += comparisons_write(groups, models, shared);
    const bool single_seed = std::all_of(groups.begin(), groups.end(),
                                         [](const Group& g) { return g.runs.size() == 1; });
    if (!single_seed) {
      md += "- The bands in the figures span the seeds (min to max); the table gives mean ± sd.\n";
    }
    md += template_render("forgetting_tail.md");
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
    if (known > 0 && fell == known) {
      md += template_render("forgetting_ppl.md", {{"a", a_name}});
    }
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
  for (const RunData& r : failed) {
    failed_json.push_back(
        failure_json({{"dir", r.dir}, {"experts", r.experts}, {"top_k", r.top_k}, {"seed", r.seed}},
                     *r.failure));
  }
  std::string md;
  ojson summary;
  if (groups.empty()) {  // every run failed: what stopped each, and nothing to compare
    md = "# Forgetting study report\n\n" + failed_lines(failed) +
         "No run finished: there is nothing to measure or compare.\n";
    summary = {{"models", ojson::array()}, {"failed", failed_json}, {"figures", ojson::array()}};
  } else {
    const RunData& first = groups[0].runs[0];
    const std::vector<std::string> figures = figures_draw(groups, out, o.plots);
    const SharedSet shared = shared_set(groups);
    const ojson models = models_summarize(groups, failed, shared);
    md = markdown_write(groups, models, shared, failed, reading_write(groups, models, shared),
                        figures);
    summary = {{"a", first.subset_a},
               {"b", first.subset_b},
               {"switch_step", first.switch_step},
               {"shared_samples", shared.size},
               {"shared_samples_by_seed", shared_sizes_json(shared)},
               {"shared_none", shared.why.empty() ? ojson() : ojson(shared.why)},
               {"models", models},
               {"failed", failed_json},
               {"figures", figures}};
  }
  const std::string path = report_files_write(out, md, summary);
  // A study's folder reported alone gets its page, with the report
  if (o.dirs.size() == 1 && fs::exists(fs::path(o.dirs[0]) / "study.json")) {
    study_page_after_report(o.dirs[0], path);
  }
  return path;
}

}  // namespace moelab
