#include "study/run.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/sysinfo.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "study/failure.hpp"
#include "study/queue.hpp"
#include "study/report.hpp"
#include "study/settings.hpp"
#include "train/collective.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;

StudyConfig study_config_load(const Experiment& x) {
  const auto it = x.sections_above.find("study");
  ConfigSection st(it == x.sections_above.end() ? nullptr : &it->second, "study", x.source);
  StudyConfig sc;
  st.get("experts", sc.experts);
  st.get("top_k", sc.top_k);
  st.get("dense_active", sc.dense_active);
  st.get("seeds", sc.seeds);
  st.get("entities", sc.entities);
  st.get("subset_a", sc.subset_a);
  st.get("subset_b", sc.subset_b);
  st.get("top", sc.top);
  st.get("bottom", sc.bottom);
  st.get("prompt", sc.prompt);
  st.get("target", sc.target);
  st.get("max_samples", sc.max_samples);
  st.get("max_per_entity", sc.max_per_entity);
  st.get("entity_seed", sc.entity_seed);
  st.finish();
  if (sc.experts.empty() ||
      std::any_of(sc.experts.begin(), sc.experts.end(), [](int64_t e) { return e < 1; }))
    st.bad("experts", "must list expert counts >= 1");
  if (sc.top_k < 1) st.bad("top_k", "must be >= 1");
  if (std::any_of(sc.seeds.begin(), sc.seeds.end(), [](int64_t s) { return s < 0; }))
    st.bad("seeds", "must be >= 0");
  if (sc.subset_a.empty()) sc.subset_a = x.phases.front().subset;
  if (sc.subset_b.empty() && x.phases.size() > 1) sc.subset_b = x.phases[1].subset;
  return sc;
}

std::vector<StudyVariant> study_variants(const Experiment& x, const StudyConfig& sc,
                                         const StudyOptions& o) {
  const auto& experts = o.experts.empty() ? sc.experts : o.experts;
  std::vector<int64_t> seeds = o.seeds.empty() ? sc.seeds : o.seeds;
  if (seeds.empty()) seeds = {int64_t(x.seed)};
  std::vector<StudyVariant> v;
  for (int64_t seed : seeds)
    for (int64_t e : experts) {
      if (e < 1) fail(fmt::format("--experts: {} is not an expert count >= 1", e));
      const int64_t k = e == 1 ? 1 : std::min(sc.top_k, e);
      v.push_back({e, k, seed, fmt::format("E{}_s{}", e, seed)});
      if (sc.dense_active && e > 1) {
        v.push_back({1, 1, seed, fmt::format("D{}_s{}", e, seed), e, k});
      }
    }
  return v;
}

std::string StudyVariant::label() const {
  if (matches > 0) {
    return fmt::format("dense, active as E={} top-{}", matches, matches_top_k);
  }
  return experts == 1 ? std::string("dense (E=1)") : fmt::format("MoE E={} top-{}", experts, top_k);
}

namespace {

// The model of a variant: the dense base, its iso-total MoE, or a dense model as wide as the MoE
// variant's active experts (top-k x I / E), which has its active parameters.
ModelConfig variant_model(const ModelConfig& dense, const StudyVariant& v) {
  if (v.matches > 0) {
    ModelConfig m = dense;
    m.intermediate_size =
        v.matches_top_k * config_iso_moe(dense, v.matches, v.matches_top_k).intermediate_size;
    return m;
  }
  return v.experts == 1 ? dense : config_iso_moe(dense, v.experts, v.top_k);
}

}  // namespace

// What a run of the study computes, for RUN/settings.json: the experiment after --set with its
// model resolved, less the variant lists (a study may grow) and what changes no result.
Settings study_settings(const Experiment& x) {
  nlohmann::json j = nlohmann::json::parse(x.text);
  j["model"] = config_to_json(x.model);
  return settings_flatten(j, {}, settings_skip({"study.experts", "study.seeds"}));
}

namespace {

// One evaluation set for every variant: [eval] evalset, or one built from [study] entities in
// RUN (by the writer, once; the same candidate samples, each model keeps its own M_ex = 1 part
// after A), or none ("").
std::string study_evalset(const Experiment& x, const StudyConfig& sc, bool writer) {
  if (!x.evalset.empty()) return x.evalset;
  if (sc.entities.empty()) {
    std::fprintf(stderr,
                 "note: no [study] entities and no [eval] evalset: no forgetting metrics\n");
    return "";
  }
  const std::string evalset = (fs::path(x.run_dir) / "evalset.jsonl").string();
  if (writer && !fs::exists(evalset)) {
    EntityBuildOptions eb;
    eb.data_dir = x.data_dir;
    eb.entities = cache_path_expand(sc.entities);
    eb.out = evalset;
    eb.subset_a = sc.subset_a;
    eb.subset_b = sc.subset_b;
    eb.top_a = sc.top, eb.bottom_b = sc.bottom;
    eb.prompt = sc.prompt, eb.target = sc.target;
    eb.max_samples = sc.max_samples, eb.max_per_entity = sc.max_per_entity;
    eb.seed = uint64_t(sc.entity_seed);
    entities_build(eb);
  }
  return evalset;
}

}  // namespace

int study_run(const Experiment& x, const StudyOptions& o) {
  const StudyConfig sc = study_config_load(x);
  if (x.model.num_local_experts != 1)
    fail(
        fmt::format("{}: [model] must be the dense base (E = 1); moelab run derives the MoE "
                    "variants from it ([study] experts)",
                    x.source));
  const auto variants = study_variants(x, sc, o);
  const fs::path dir(x.run_dir);
  // In a data-parallel study every rank trains each run; rank 0 alone writes the study's files
  // (the evaluation set, study.json, the report), and the others wait for what they read.
  const bool writer = train_writer();
  // A study started under other settings is refused before anything is written.
  const Settings settings = study_settings(x);
  if (o.restart) {
    if (writer) {
      std::set<std::string> runs = study_listed((dir / "study.json").string(), "variants", "dir");
      for (const StudyVariant& v : variants) runs.insert(v.dir);
      study_discard(x.run_dir, runs, {"study.json", "report", "settings.json"}, x.evalset.empty(),
                    "run(s)");
    }
  } else {
    settings_check(x.run_dir, settings,
                   "another run.dir (--set run.dir=...), or --restart to discard the runs there");
  }
  train_barrier();
  if (writer) fs::create_directories(dir);

  const std::string evalset = study_evalset(x, sc, writer);

  nlohmann::ordered_json study = {{"experiment", x.source}, {"variants", nlohmann::json::array()}};
  for (const StudyVariant& v : variants)
    study["variants"].push_back({{"dir", v.dir},
                                 {"experts", v.experts},
                                 {"top_k", v.top_k},
                                 {"seed", v.seed},
                                 {"label", v.label()},
                                 {"matches", v.matches}});
  if (writer) {
    file_write_atomic((dir / "study.json").string(), study.dump(2) + "\n");
    settings_record(x.run_dir, settings, "moelab study forgetting");
  }
  train_barrier();

  std::vector<QueueRun> queue;
  for (const StudyVariant& v : variants) {
    auto experiment = [&x, &v, &dir, &evalset] {
      Experiment e = x;
      e.model = variant_model(x.model, v);
      e.seed = uint64_t(v.seed);
      e.run_dir = (dir / v.dir).string();
      e.evalset = evalset;
      return e;
    };
    queue.push_back({v.dir,
                     v.matches > 0 ? fmt::format("{} seed {}", v.label(), v.seed)
                                   : fmt::format("E={} top-{} seed {}", v.experts, v.top_k, v.seed),
                     experiment});
  }
  QueueOptions qo;
  qo.page_dir = dir.string();
  const QueueResult done = queue_run(queue, qo);
  if (done.status == 130) {
    return 130;
  }
  const std::vector<std::string>& failed = done.failed;
  std::string report;
  if (o.report && writer) {
    ReportOptions r;
    r.dirs = {x.run_dir};
    r.out = (dir / "report").string();
    try {
      report = report_write(r);
    } catch (const std::exception& err) {
      std::fprintf(
          stderr,
          "moelab run: the runs are kept, but the report failed: %s (moelab study report %s "
          "writes it)\n",
          one_line(err.what()).c_str(), x.run_dir.c_str());
      return 1;
    }
  }
  if (failed.empty()) return 0;
  return study_failed_end(
      fmt::format("moelab run: {} of {} runs failed", failed.size(), variants.size()), failed,
      report.empty() ? "" : "; the report lists why: " + report);
}

}  // namespace moelab
