// The report of `moelab study ct` (study/ct.hpp): what each continual-training method learned of
// the new domain against what it kept of the original one, what it cost, and a reading that claims
// no more than the seeds support.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "study/ct.hpp"
#include "study/ct_measure.hpp"
#include "study/matched.hpp"
#include "study/report.hpp"
#include "study/study_page.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ----------------------------------------------------------------------------
// reading

struct MethodRuns {
  std::string name, kind;
  ojson info;                    // its entry in ct.json
  std::vector<RunData> runs;     // the runs that have started
  std::vector<ojson> resources;  // each run's resources.json (null where absent)
};

struct CtStudy {
  std::string dir, original, fresh;
  ojson ct;  // ct.json
  std::vector<MethodRuns> methods;
  std::vector<std::string> notes;  // runs left out or unfinished
  ojson failed = ojson::array();   // runs and measurements that failed, with their reasons
};

// A failed measurement of `result` (its record at ct_measure_failure_path), noted as "WHAT
// failed: reason." (what: the record's own where empty) and listed in summary.json.
void measure_failure_note(CtStudy& st, const fs::path& result, const std::string& what) {
  const ojson mf = json_file_or_null(ct_measure_failure_path(result.string()));
  if (mf.is_object()) {
    const std::string reason = mf.value("reason", "");
    st.notes.push_back(
        fmt::format("{} failed: {}.", what.empty() ? "The " + mf.value("what", "") : what, reason));
    st.failed.push_back({{"measurement", mf.value("what", "")}, {"reason", reason}});
  }
}

CtStudy study_read(const std::string& dir) {
  CtStudy st;
  st.dir = dir;
  const fs::path path = fs::path(dir) / "ct.json";
  st.ct = json_file_or_null(path.string());
  if (!st.ct.is_object() || !st.ct.contains("methods") || !st.ct["methods"].is_array())
    fail(path.string() + ": missing or invalid (not a folder written by moelab ct)");
  try {
    st.original = st.ct.at("original").get<std::string>();
    st.fresh = st.ct.at("new").get<std::string>();
    for (const ojson& m : st.ct["methods"]) {
      MethodRuns mr{m.at("name").get<std::string>(), m.at("kind").get<std::string>(), m, {}, {}};
      int64_t failed = 0;
      for (const ojson& r : m.at("runs")) {
        const std::string rel = r.at("dir").get<std::string>();
        const fs::path rd = fs::path(dir) / rel;
        // A run that failed is listed with its reason and left out of every number.
        if (const auto f = run_failure_read(rd.string())) {
          st.notes.push_back(
              fmt::format("`{}` {}. Left out of the tables, the figures and the comparisons.", rel,
                          run_failure_line(*f)));
          st.failed.push_back(failure_json(
              {{"run", rel}, {"method", mr.name}, {"seed", r.value("seed", int64_t(0))}}, *f));
          failed++;
          continue;
        }
        if (!fs::exists(rd / "metrics.jsonl")) {
          st.notes.push_back(fmt::format("`{}` has not started; left out.", rd.string()));
          continue;
        }
        measure_failure_note(st, rd / "final_eval.json", "The final evaluation of `" + rel + "`");
        mr.runs.push_back(run_read(rd.string()));
        mr.resources.push_back(json_file_or_null((rd / "resources.json").string()));
        const RunData& d = mr.runs.back();
        if (const int64_t total = d.run.value("total_steps", int64_t(0)); d.last_step < total)
          st.notes.push_back(fmt::format("`{}` is at step {} of {}; its numbers are partial.",
                                         d.dir, d.last_step, total));
      }
      if (failed > 0 && !mr.runs.empty())
        st.notes.push_back(
            fmt::format("The numbers of {} are over the n = {} of its {} runs that "
                        "finished.",
                        mr.name, mr.runs.size(), mr.runs.size() + size_t(failed)));
      mr.info["runs_failed"] = failed;
      if (!mr.runs.empty()) st.methods.push_back(std::move(mr));
    }
    for (const ojson& k : st.ct.value("compress", ojson::array())) {
      const fs::path cd = fs::path(dir) / "compress" / k.at("name").get<std::string>();
      std::error_code ec;
      if (!fs::is_directory(cd, ec)) continue;
      for (const auto& e : fs::directory_iterator(cd, ec)) {
        measure_failure_note(st, e.path() / "eval.json", "");
      }
    }
  } catch (const json::exception& e) {
    fail(path.string() + ": " + e.what());
  }
  if (st.methods.empty() && st.failed.empty())
    fail(fmt::format("{}: no run of the study has metrics yet", dir));
  return st;
}

// ----------------------------------------------------------------------------
// figures

std::vector<std::string> figures_draw(const CtStudy& st, const std::string& out, bool plots) {
  Figures figures{out, plots, {}};
  const ojson& base = st.ct.value("base_val_loss", ojson());
  const std::string vo = "val:" + st.original, vn = "val:" + st.fresh;
  {
    PlotChart c{fmt::format("held-out loss on {} (original) against {} (new) along training, from "
                            "the base; lower left is better",
                            st.original, st.fresh),
                fmt::format("held-out loss on {} (new domain), nats/token", st.fresh),
                fmt::format("held-out loss on {} (original domain)", st.original)};
    const bool has_base = base.is_object() && base.contains(st.original) && base.contains(st.fresh);
    for (size_t i = 0; i < st.methods.size(); i++) {
      const Agg n = runs_aggregate(st.methods[i].runs, vn),
                o = runs_aggregate(st.methods[i].runs, vo);
      PlotSeries s{st.methods[i].name, {}, {}, {}, {}, 1, int(i) + 1, true};
      if (has_base) s.x.push_back(base[st.fresh]), s.y.push_back(base[st.original]);
      for (size_t j = 0; j < n.x.size(); j++) {
        const auto k = std::find(o.x.begin(), o.x.end(), n.x[j]);
        if (k == o.x.end()) continue;
        s.x.push_back(n.mean[j]);
        s.y.push_back(o.mean[size_t(k - o.x.begin())]);
      }
      if (!s.x.empty()) c.series.push_back(std::move(s));
    }
    if (has_base) c.series.push_back({"base", {base[st.fresh]}, {base[st.original]}, {}, {}, 1, 0});
    figures.draw(c, "tradeoff");
  }
  for (const auto& [key, name] : {std::pair{"m_ex", "M_ex"}, std::pair{"m_in", "M_in"}}) {
    PlotChart c{fmt::format("{} on the samples the base recalled (M_ex = 1 at the start)", name),
                "training step", name};
    c.ymin = 0, c.ymax = 1.05;
    for (size_t i = 0; i < st.methods.size(); i++) {
      chart_add(c, runs_aggregate(st.methods[i].runs, key), st.methods[i].name, int(i) + 1, 1,
                st.methods[i].runs.size() > 1);
    }
    figures.draw(c, key);
  }
  {
    PlotChart c{fmt::format("held-out loss on {} (solid) and {} (dashed)", st.fresh, st.original),
                "training step", "cross-entropy (nats/token)"};
    for (size_t i = 0; i < st.methods.size(); i++)
      for (const auto& [key, dash] : {std::pair{vn, 1}, std::pair{vo, 2}}) {
        chart_add(c, runs_aggregate(st.methods[i].runs, key),
                  st.methods[i].name + " " + key.substr(4), int(i) + 1, dash, false);
      }
    figures.draw(c, "loss");
  }
  return figures.stems;
}

// ----------------------------------------------------------------------------
// numbers

// A number of a run's resources.json; r is one of m.runs.
double resource(const MethodRuns& m, const RunData& r, const char* key) {
  const size_t i = size_t(&r - m.runs.data());
  const ojson& res = m.resources[i];
  return res.is_object() && res.contains(key) ? res[key].get<double>() : NAN;
}

ojson methods_summarize(const CtStudy& st) {
  const std::string vo = "val:" + st.original, vn = "val:" + st.fresh;
  ojson out = ojson::array();
  for (const MethodRuns& mr : st.methods) {
    const auto& runs = mr.runs;
    ojson m;
    m["method"] = mr.name;
    m["kind"] = mr.kind;
    m["seeds"] = ojson::array();  // the seeds that finished: every statistic is over them
    for (const RunData& r : runs) m["seeds"].push_back(r.seed);
    m["runs_failed"] = mr.info.value("runs_failed", int64_t(0));
    m["params_total"] = mr.info.value("params_total", int64_t(0));
    m["params_trainable"] = mr.info.value("params_trainable", int64_t(0));
    m["tokens"] =
        runs_stat(runs, [](const RunData& r) { return double(r.last_step * r.tokens_per_step); });
    m["final_val_loss_original"] =
        runs_stat(runs, [&](const RunData& r) { return run_last(r, vo); });
    m["final_val_loss_new"] = runs_stat(runs, [&](const RunData& r) { return run_last(r, vn); });
    m["evalset_kept"] =
        runs_stat(runs, [](const RunData& r) { return r.kept >= 0 ? double(r.kept) : NAN; });
    m["evalset_candidates"] = runs_stat(
        runs, [](const RunData& r) { return r.candidates >= 0 ? double(r.candidates) : NAN; });
    m["final_m_ex"] = runs_stat(runs, [](const RunData& r) { return run_last(r, "m_ex"); });
    m["final_m_in"] = runs_stat(runs, [](const RunData& r) { return run_last(r, "m_in"); });
    m["tokens_per_s"] = runs_stat(runs, run_median_tokens_per_s);
    m["peak_rss_bytes"] =
        runs_stat(runs, [&](const RunData& r) { return resource(mr, r, "peak_rss_bytes"); });
    m["train_s"] = runs_stat(runs, [&](const RunData& r) { return resource(mr, r, "train_s"); });
    out.push_back(m);
  }
  return out;
}

// ----------------------------------------------------------------------------
// at matched learning of the new domain (study/matched.hpp)

constexpr int kMatchedLevels = 4;

// A run's series of `key` with the base's value at step 0 (the base is where every run starts).
Series series_from_base(const RunData& r, const std::string& key, double base) {
  const auto it = r.s.find(key);
  Series s = it == r.s.end() ? Series() : it->second;
  s.emplace(0, base);
  return s;
}

// Where a run's held-out loss on the new domain first reaches `level` (from the base's losses,
// ct.json base_val_loss, at step 0): the step, its loss on the original domain and M_ex there.
struct AtLevel {
  double step, loss_original, m_ex;
};
AtLevel run_at_level(const CtStudy& st, const RunData& r, double level) {
  const ojson& base = st.ct["base_val_loss"];
  const double step = series_step_at_level(
      series_from_base(r, "val:" + st.fresh, base[st.fresh].get<double>()), level);
  const auto ex = r.s.find("m_ex");
  return {step,
          series_at_step(series_from_base(r, "val:" + st.original, base[st.original].get<double>()),
                         step),
          ex == r.s.end() ? NAN : series_at_step(ex->second, step)};
}

// Whether a method is its family's best rate (a method without a grid is its own family's).
bool family_best(const ojson& families, const std::string& name) {
  return std::any_of(families.begin(), families.end(),
                     [&](const ojson& f) { return f["best"] == name; });
}

// Adds to each method's summary "matched": per level of held-out loss on the new domain that
// every family's best rate reaches, the step where each run first reached it and its held-out
// loss on the original domain and M_ex there (null where a rate off the best never reached it:
// a slow rate of a grid does not decide how deep the comparison goes). Returns the levels
// (empty, with `why` set, where there are none).
std::vector<double> matched_add(const CtStudy& st, const ojson& families, ojson& methods,
                                std::string& why) {
  const ojson& base = st.ct.value("base_val_loss", ojson());
  if (!base.is_object() || !base.contains(st.fresh) || !base.contains(st.original)) {
    why = "ct.json has no base held-out losses to start the trajectories from";
    return {};
  }
  const double start = base[st.fresh].get<double>();
  const std::string vn = "val:" + st.fresh;
  double reach = -INFINITY;  // the lowest loss on the new domain that every run reached
  std::string worst;
  for (const MethodRuns& mr : st.methods) {
    if (!family_best(families, mr.name)) {
      continue;
    }
    for (const RunData& r : mr.runs) {
      double lowest = INFINITY;
      for (const auto& [step, v] : series_from_base(r, vn, start)) {
        lowest = std::isfinite(v) ? std::min(lowest, v) : lowest;
      }
      if (lowest > reach) {
        reach = lowest;
        worst = r.dir;
      }
    }
  }
  const std::vector<double> levels = matched_levels(start, reach, kMatchedLevels);
  if (levels.empty()) {
    why = fmt::format(
        "no held-out loss on `{}` below the base's ({:.3f}) is reached by every run: "
        "`{}` gets no lower than {:.3f}",
        st.fresh, start, worst, reach);
    return {};
  }
  for (size_t m = 0; m < st.methods.size(); m++) {
    ojson& out = methods[m]["matched"] = ojson::array();
    for (double level : levels) {
      std::vector<double> steps, loss_o, m_ex;
      for (const RunData& r : st.methods[m].runs) {
        const AtLevel at = run_at_level(st, r, level);
        steps.push_back(at.step);
        loss_o.push_back(at.loss_original);
        m_ex.push_back(at.m_ex);
      }
      out.push_back({{"val_loss_new", level},
                     {"step", values_stat(steps)},
                     {"val_loss_original", values_stat(loss_o)},
                     {"m_ex", values_stat(m_ex)}});
    }
  }
  return levels;
}

// The method a name of [ct] compare stands for: the method of that name, else the best rate of
// the family of that name; null where neither finished a run.
const MethodRuns* method_named(const CtStudy& st, const ojson& families, const std::string& name) {
  for (const MethodRuns& m : st.methods) {
    if (m.name == name) {
      return &m;
    }
  }
  for (const ojson& f : families) {
    if (f["family"] == name && f["best"].is_string()) {
      return method_named(st, families, f["best"].get<std::string>());
    }
  }
  return nullptr;
}

// The reading at the deepest level: a against b on the original domain's loss and on M_ex,
// paired over seeds.
std::string matched_pair_md(const CtStudy& st, const MethodRuns& a, const MethodRuns& b,
                            double deepest, int digits) {
  auto at_deepest = [&](const MethodRuns& mr, bool loss) {
    return runs_seed_values(mr.runs, [&](const RunData& r) {
      const AtLevel at = run_at_level(st, r, deepest);
      return loss ? at.loss_original : at.m_ex;
    });
  };
  const std::string where = fmt::format(" at {} = {:.{}f}", st.fresh, deepest, digits);
  const Comparison loss = stat_compare(at_deepest(a, true), at_deepest(b, true));
  if (!std::isfinite(loss.mean)) {
    auto reached = [&](const MethodRuns& mr) {
      return std::any_of(mr.runs.begin(), mr.runs.end(), [&](const RunData& r) {
        return std::isfinite(run_at_level(st, r, deepest).step);
      });
    };
    return fmt::format("- {} against {}{}: not compared, {} never reached that loss.\n", a.name,
                       b.name, where, reached(a) ? b.name : a.name);
  }
  const Comparison recall = stat_compare(at_deepest(a, false), at_deepest(b, false),
                                         double(a.runs[0].kept), double(b.runs[0].kept));
  return "- " + stat_compare_sentence(a.name, b.name, "held-out " + st.original + where, loss) +
         " " + stat_compare_sentence(a.name, b.name, "M_ex" + where, recall) + "\n";
}

// The table at matched learning (each family's best rate), and a reading at the deepest level
// every such run reached: each method against full CT (the baseline that decides), then the
// pairs of [ct] compare, paired over seeds.
std::string matched_md(const CtStudy& st, const ojson& methods, const std::vector<double>& levels,
                       const std::string& why, const ojson& families) {
  if (levels.empty()) {
    return fmt::format("No comparison at matched learning of `{}`: {}.\n\n", st.fresh, why);
  }
  ojson best = ojson::array();
  for (const ojson& m : methods) {
    if (family_best(families, m["method"].get<std::string>())) {
      best.push_back(m);
    }
  }
  MdColumns table(best, [](const ojson& m) { return m["method"].get<std::string>(); });
  // enough digits that neighbouring levels read apart
  const double spacing = levels.size() > 1 ? std::abs(levels[0] - levels[1]) : 1;
  const int digits = std::clamp(int(std::ceil(-std::log10(spacing))) + 1, 3, 8);
  for (size_t l = 0; l < levels.size(); l++) {
    const std::string at = fmt::format(" at {} = {:.{}f}", st.fresh, levels[l], digits);
    table.row("step" + at, [&](const ojson& m) { return stat_format(m["matched"][l]["step"], 1); });
    table.row("held-out " + st.original + at,
              [&](const ojson& m) { return stat_format(m["matched"][l]["val_loss_original"]); });
    table.row("M_ex" + at, [&](const ojson& m) { return stat_format(m["matched"][l]["m_ex"]); });
  }
  std::string reading;
  const auto full = std::find_if(st.methods.begin(), st.methods.end(), [&](const MethodRuns& m) {
    return m.kind == "full" && family_best(families, m.name);
  });
  for (const MethodRuns& mr : st.methods) {
    if (full != st.methods.end() && &mr != &*full && family_best(families, mr.name)) {
      reading += matched_pair_md(st, mr, *full, levels.back(), digits);
    }
  }
  std::string compared;
  for (const ojson& pair : st.ct.value("compare", ojson::array())) {
    const MethodRuns* a = method_named(st, families, pair[0].get<std::string>());
    const MethodRuns* b = method_named(st, families, pair[1].get<std::string>());
    if (a == nullptr || b == nullptr) {
      compared += fmt::format("- {} against {}: no finished run of {}.\n", pair[0].dump(),
                              pair[1].dump(), a == nullptr ? pair[0].dump() : pair[1].dump());
      continue;
    }
    compared += matched_pair_md(st, *a, *b, levels.back(), digits);
  }
  if (!compared.empty()) {
    reading += "\nThe pairs the study file asks for (`[ct] compare`):\n\n" + compared;
  }
  return template_render(
      "ct_matched.md",
      {{"new", st.fresh}, {"original", st.original}, {"table", table.md()}, {"reading", reading}});
}

// ----------------------------------------------------------------------------
// grids of learning rates: every rate's run is kept and shown; per family the rate with the
// lowest held-out loss on the new domain is its best

// Adds "families" to the summary: per [[ct.methods]] entry its members (rates) and the best;
// returns the section of summary.md ("" where no method has a grid).
std::string lr_grid_md(const CtStudy& st, const ojson& methods, ojson& families) {
  families = ojson::array();
  std::vector<double> best_loss;  // per family, the lowest final loss on the new domain
  bool grid = false;
  for (size_t i = 0; i < methods.size(); i++) {
    const std::string family = st.methods[i].info.value("family", st.methods[i].name);
    auto it = std::find_if(families.begin(), families.end(),
                           [&](const ojson& f) { return f["family"] == family; });
    if (it == families.end()) {
      families.push_back({{"family", family}, {"members", ojson::array()}, {"best", nullptr}});
      best_loss.push_back(INFINITY);
      it = families.end() - 1;
    }
    (*it)["members"].push_back({{"method", st.methods[i].name},
                                {"max_lr", st.methods[i].info.value("max_lr", 0.0)},
                                {"final_val_loss_new", methods[i]["final_val_loss_new"]},
                                {"final_val_loss_original", methods[i]["final_val_loss_original"]},
                                {"final_m_ex", methods[i]["final_m_ex"]}});
    double& best = best_loss[size_t(it - families.begin())];
    if (const double loss = stat_mean(methods[i]["final_val_loss_new"]); loss < best) {
      best = loss;
      (*it)["best"] = st.methods[i].name;
    }
    grid = grid || (*it)["members"].size() > 1;
  }
  if (!grid) {
    return "";
  }
  std::string md = fmt::format(
      "## Learning rates\n\nEvery rate of a method's grid ran and is kept; the best per method "
      "is the rate with the lowest held-out loss on `{}` at the end (marked *).\n\n| method | "
      "rate | held-out {} (new) | held-out {} (original) | M_ex |\n|---|---|---|---|---|\n",
      st.fresh, st.fresh, st.original);
  std::string edges;
  for (ojson& f : families) {
    double lowest = INFINITY, highest = -INFINITY, best_rate = NAN;
    for (const ojson& m : f["members"]) {
      const double rate = m["max_lr"].get<double>();
      md += fmt::format("| {} | {:g}{} | {} | {} | {} |\n", f["family"].get<std::string>(), rate,
                        m["method"] == f["best"] ? " *" : "", stat_format(m["final_val_loss_new"]),
                        stat_format(m["final_val_loss_original"]), stat_format(m["final_m_ex"]));
      lowest = std::min(lowest, rate);
      highest = std::max(highest, rate);
      best_rate = m["method"] == f["best"] ? rate : best_rate;
    }
    // An optimum at the edge of the searched range is not known to be one.
    const bool grid = f["members"].size() > 1;
    const char* edge = !grid || !std::isfinite(best_rate) ? nullptr
                       : best_rate == highest             ? "highest"
                       : best_rate == lowest              ? "lowest"
                                                          : nullptr;
    f["best_at_edge"] = edge == nullptr ? ojson() : ojson(edge);
    if (edge != nullptr) {
      edges += fmt::format(
          "- {}: the best rate, {:g}, is the grid's {}: the optimum may lie "
          "beyond the searched range.\n",
          f["family"].get<std::string>(), best_rate, edge);
    }
  }
  return md + (edges.empty() ? "" : "\n" + edges) + "\n";
}

// summary.md: the study, its notes, the table of numbers, the reading, the final models' part
// (DeRS), the figures.
std::string markdown_write(const CtStudy& st, const ojson& methods, const std::string& matched,
                           const std::string& reading, const DersSection& ders,
                           const std::vector<std::string>& figures) {
  const ojson& base = st.ct.value("base_val_loss", ojson());
  std::string notes, base_loss;
  for (const std::string& n : st.notes) {
    notes += "Note: " + n + "\n\n";
  }
  if (base.is_object()) {
    base_loss =
        fmt::format("The base's held-out loss: {:.3f} on `{}`, {:.3f} on `{}`.\n\n",
                    base.value(st.original, NAN), st.original, base.value(st.fresh, NAN), st.fresh);
  }
  MdColumns table(methods, [](const ojson& m) { return m["method"].get<std::string>(); });
  table.row("kind", [](const ojson& m) { return m["kind"].get<std::string>(); });
  table.row("seeds", [](const ojson& m) {
    const int64_t nf = m["runs_failed"].get<int64_t>();
    return seeds_cell(m["seeds"], fmt::format("{}", nf), size_t(nf));
  });
  table.row("trainable params (share)", [](const ojson& m) {
    const double t = m["params_trainable"].get<double>(), n = m["params_total"].get<double>();
    return fmt::format("{} ({:.2f}%)", human_count(t), n > 0 ? 100 * t / n : NAN);
  });
  table.row_count("total params", "params_total");
  table.row_count("tokens trained", "tokens");
  table.row_stat("held-out loss " + st.fresh + " (new) at the end", "final_val_loss_new");
  table.row_stat("held-out loss " + st.original + " (original) at the end",
                 "final_val_loss_original");
  table.row_kept("M_ex = 1 samples at the start (of candidates)");
  // Where the base recalled none of the samples the forgetting metrics are undefined.
  table.row_recalled("M_ex at the end", "final_m_ex");
  table.row_recalled("M_in at the end", "final_m_in");
  table.row_stat("tokens/s (median)", "tokens_per_s", 0);
  table.row("peak RSS (MB)", [](const ojson& m) {
    const ojson& v = m["peak_rss_bytes"];
    if (v.is_null()) {
      return std::string("-");
    }
    ojson mb = v.is_number() ? ojson(v.get<double>() / 1e6)
                             : ojson{{"mean", v["mean"].get<double>() / 1e6},
                                     {"sd", v["sd"].get<double>() / 1e6},
                                     {"n", v["n"]}};
    return stat_format(mb, 0);
  });
  std::vector<std::string> listed = ders.figures;
  listed.insert(listed.end(), figures.begin(), figures.end());
  return template_render("ct.md", {{"base", st.ct.value("base", "")},
                                   {"original", st.original},
                                   {"new", st.fresh},
                                   {"steps", fmt::format("{}", st.ct.value("steps", int64_t(0)))},
                                   {"dir", st.dir},
                                   {"notes", notes},
                                   {"base_loss", base_loss},
                                   {"table", table.md()},
                                   {"matched", matched},
                                   {"reading", reading},
                                   {"ders", ders.md},
                                   {"images", md_images(listed)}});
}

// ----------------------------------------------------------------------------
// the reading

// "- WHAT: X v, Y w, ...", best first, then the best against the second and against the last,
// paired over seeds (recall with one seed each: its evaluation sets' interval).
std::string rank_line(const CtStudy& st, const ojson& methods, const std::string& what,
                      const std::string& short_name, const std::string& key,
                      const std::function<double(const RunData&)>& value, bool lower_better) {
  std::vector<size_t> order;
  for (size_t i = 0; i < methods.size(); i++) {
    if (std::isfinite(stat_mean(methods[i][key]))) {
      order.push_back(i);
    }
  }
  if (order.empty()) {
    return "";
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const double va = stat_mean(methods[a][key]), vb = stat_mean(methods[b][key]);
    return lower_better ? va < vb : va > vb;
  });
  std::vector<std::string> list;
  for (size_t i : order) {
    list.push_back(fmt::format("{} {:.3f}", st.methods[i].name, stat_mean(methods[i][key])));
  }
  std::string md = "- " + what + ": " + list_join(list) + ".";
  const bool recall = key == "final_m_ex";  // a proportion of the recalled samples
  std::vector<size_t> others(order.begin() + 1, order.begin() + std::min<size_t>(order.size(), 2));
  if (order.size() > 2) {
    others.push_back(order.back());
  }
  std::string sentences;
  bool any_interval = false;
  for (size_t other : others) {
    const MethodRuns& best = st.methods[order[0]];
    const Comparison c = stat_compare(runs_seed_values(best.runs, value),
                                      runs_seed_values(st.methods[other].runs, value),
                                      recall ? stat_mean(methods[order[0]]["evalset_kept"]) : NAN,
                                      recall ? stat_mean(methods[other]["evalset_kept"]) : NAN);
    any_interval = any_interval || std::isfinite(c.ci.lo);
    sentences += " " + stat_compare_sentence(best.name, st.methods[other].name, short_name, c);
  }
  if (!others.empty()) {
    md += any_interval ? sentences
                       : " With one run per method this order has no interval, so it is not a "
                         "ranking (several seeds give paired t-intervals).";
  }
  return md + "\n";
}

// Why a run logged no forgetting metrics: no evaluation set, or a base that recalled too few of
// its samples at the start (the trainer stops there), or no record of the filtering yet.
std::string forgetting_missing_cause(const RunData& r) {
  const std::string cause = run_recall_cause(
      r, {"[ct]", "at the start", "",
          "; entities the base knows better, or a larger candidate set ([ct] max_samples, "
          "max_per_entity, top, bottom), would give a set to measure",
          ""});
  if (!cause.empty()) {
    return cause;
  }
  return fmt::format("no record of the evaluation set's filtering (the run is at step {})",
                     r.last_step);
}

std::string reading_write(const CtStudy& st, const ojson& methods) {
  const ojson& base = st.ct.value("base_val_loss", ojson());
  std::string md;
  const std::string vo = "val:" + st.original, vn = "val:" + st.fresh;
  md += rank_line(
      st, methods, fmt::format("Learning `{}`: held-out loss at the end, lowest first", st.fresh),
      "held-out loss on " + st.fresh, "final_val_loss_new",
      [&](const RunData& r) { return run_last(r, vn); }, true);
  md += rank_line(
      st, methods, fmt::format("Keeping `{}`: held-out loss at the end, lowest first", st.original),
      "held-out loss on " + st.original, "final_val_loss_original",
      [&](const RunData& r) { return run_last(r, vo); }, true);
  if (base.is_object() && base.contains(st.original)) {
    const double b = base[st.original].get<double>();
    std::string list;
    for (const ojson& m : methods)
      if (const double v = stat_mean(m["final_val_loss_original"]); std::isfinite(v))
        list += fmt::format("{}{} {:+.3f}", list.empty() ? "" : ", ",
                            m["method"].get<std::string>(), v - b);
    if (!list.empty())
      md += fmt::format("- Change of the held-out loss on `{}` from the base ({:.3f}): {}.\n",
                        st.original, b, list);
  }
  md += rank_line(
      st, methods,
      "Recall of the base's entities: M_ex at the end (from 1.0 at the start), highest "
      "first",
      "M_ex", "final_m_ex", [](const RunData& r) { return run_last(r, "m_ex"); }, false);
  // Runs without forgetting metrics, one line per cause.
  std::vector<std::pair<std::string, std::string>> missing;  // cause, runs
  for (const MethodRuns& mr : st.methods)
    for (const RunData& r : mr.runs) {
      if (r.s.contains("m_ex")) continue;
      const std::string cause = forgetting_missing_cause(r);
      auto it = std::find_if(missing.begin(), missing.end(),
                             [&](const auto& m) { return m.first == cause; });
      if (it == missing.end()) it = missing.insert(missing.end(), {cause, ""});
      it->second += (it->second.empty() ? "`" : ", `") + r.dir + "`";
    }
  for (const auto& [cause, runs] : missing)
    md += fmt::format("- No forgetting metrics for {}: {}.\n", runs, cause);
  std::string cost;
  for (const ojson& m : methods)
    cost += fmt::format("{}{} trains {} parameters at {} tokens/s", cost.empty() ? "" : "; ",
                        m["method"].get<std::string>(),
                        human_count(m["params_trainable"].get<double>()),
                        stat_format(m["tokens_per_s"], 0));
  md += "- Cost: " + cost + ".\n";
  return md;
}

}  // namespace

// ----------------------------------------------------------------------------

std::string ct_report_write(const std::string& dir, const std::string& out_dir, bool plots) {
  const CtStudy st = study_read(dir);
  const std::string out = out_dir.empty() ? (fs::path(dir) / "report").string() : out_dir;
  fs::create_directories(out);
  if (st.methods.empty()) {  // every run failed: what stopped each, and nothing to compare
    std::string md = "# Continual-training report\n\n";
    for (const std::string& n : st.notes) md += "Note: " + n + "\n\n";
    md += "No run finished: there is nothing to measure or compare.\n";
    const ojson summary = {
        {"base", st.ct.value("base", "")}, {"original", st.original}, {"new", st.fresh},
        {"methods", ojson::array()},       {"failed", st.failed},     {"figures", ojson::array()}};
    const std::string path = report_files_write(out, md, summary);
    study_page_after_report(dir, path);
    return path;
  }
  const std::vector<std::string> figures = figures_draw(st, out, plots);
  ojson methods = methods_summarize(st);
  std::string no_level;
  ojson families;
  const std::string rates = lr_grid_md(st, methods, families);
  const std::vector<double> levels = matched_add(st, families, methods, no_level);
  const std::string matched = rates + matched_md(st, methods, levels, no_level, families);
  const DersSection ders = ct_report_ders(dir, st.ct, out, plots);
  const std::string md =
      markdown_write(st, methods, matched, reading_write(st, methods), ders, figures);
  const ojson summary = {{"base", st.ct.value("base", "")},
                         {"original", st.original},
                         {"new", st.fresh},
                         {"base_val_loss", st.ct.value("base_val_loss", ojson())},
                         {"methods", methods},
                         {"families", families},
                         {"matched_levels", levels},
                         {"matched_none", no_level.empty() ? ojson() : ojson(no_level)},
                         {"failed", st.failed},
                         {"final_models", ders.summary},
                         {"figures", figures}};
  const std::string path = report_files_write(out, md, summary);
  study_page_after_report(dir, path);
  return path;
}

}  // namespace moelab
