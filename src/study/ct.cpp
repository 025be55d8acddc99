#include "study/ct.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "model/model.hpp"
#include "model/params.hpp"
#include "study/ct_config.hpp"
#include "study/ct_measure.hpp"
#include "study/failure.hpp"
#include "study/queue.hpp"
#include "study/report_kit.hpp"
#include "study/settings.hpp"
#include "train/collective.hpp"
#include "train/experiment.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// The base must be a checkpoint folder before anything is derived from it.
void base_check(const CtConfig& c) {
  std::error_code ec;
  if (!fs::is_directory(c.base, ec))
    fail(fmt::format("{}: 'ct.base': {}: no such checkpoint folder", c.source, c.base));
  for (const char* f : {"config.json", "model.safetensors"})
    if (!fs::exists(fs::path(c.base) / f, ec))
      fail(fmt::format("{}: 'ct.base': {}: not a moelab checkpoint (no {})", c.source, c.base, f));
}

// The base's tokenizer is the data's, and both domains are subsets of the data.
void data_check(const CtConfig& c, const DataDir& data) {
  const fs::path state_path = fs::path(c.base) / "trainer_state.json";
  std::error_code ec;
  if (fs::exists(state_path, ec)) {
    const json state = json::parse(file_read(state_path.string()), nullptr, false);
    if (!state.is_object())
      fail(fmt::format("{}: 'ct.base': {}: not a trainer state (invalid JSON)", c.source,
                       state_path.string()));
    try {
      checkpoint_check_tokenizer(c.base, state, data.fingerprint, data.dir);
    } catch (const Error& e) {
      fail(fmt::format("{}: 'ct.base': {}", c.source, e.what()));
    }
  }
  for (const auto& [key, subset] : {std::pair{"original", c.original}, std::pair{"new", c.fresh}})
    if (std::find(data.subset_names.begin(), data.subset_names.end(), subset) ==
        data.subset_names.end()) {
      std::string names;
      for (const std::string& n : data.subset_names) names += (names.empty() ? "" : ", ") + n;
      fail(fmt::format("{}: 'ct.{}': no subset '{}' in {} (subsets: {})", c.source, key, subset,
                       data.dir, names));
    }
}

// ----------------------------------------------------------------------------
// one experiment per method and seed

toml::table& table_at(toml::table& t, const char* key) {
  if (!t.contains(key)) t.insert(key, toml::table{});
  toml::table* sub = t.get_as<toml::table>(key);
  if (!sub) fail(fmt::format("'{}' must be a table", key));
  return *sub;
}

// What a method trains: everything (full), the adapters (lora), or the MoE-CT parts, with the
// embeddings and the head when asked (moe-ct). ECMAScript regexes on tensor names.
std::vector<std::string> method_freeze(const CtMethod& m) {
  if (m.kind == CtKind::Lora) return {"^(?!.*lora_)"};
  if (m.kind == CtKind::MoeCt)
    return {m.train_embeddings ? "^(?!.*(\\.mlp\\.ct\\.|embed_tokens|lm_head))"
                               : "^(?!.*\\.mlp\\.ct\\.)"};
  return {};
}

// ----------------------------------------------------------------------------
// upcycled starting points

// RUN/<method>/upcycled_s<seed>: the base made an MoE as the method asks, with its router drawn
// from the run's seed.
std::string upcycled_dir(const CtConfig& c, const CtMethod& m, int64_t seed) {
  return (fs::path(c.run_dir) / m.name / fmt::format("upcycled_s{}", seed)).string();
}

UpcycleOptions upcycle_options(const CtMethod& m, int64_t seed) {
  UpcycleOptions o = m.upcycle;
  o.seed = uint64_t(seed);
  o.ders.seed = uint64_t(seed);
  return o;
}

// Every upcycle method's options are checked against the base first (one line naming the
// method); then each missing starting point is written, and one whose config no longer matches
// the method (the file changed) is written again.
void upcycled_check(const CtConfig& c, const std::vector<const CtMethod*>& methods,
                    const std::vector<int64_t>& seeds) {
  const ModelConfig base = config_load((fs::path(c.base) / "config.json").string());
  for (const CtMethod* m : methods)
    if (m->kind == CtKind::Upcycle) try {
        (void)upcycle_config(base, upcycle_options(*m, seeds.front()), c.base);
      } catch (const Error& e) {
        fail(fmt::format("{}: method '{}': {}", c.source, m->name, e.what()));
      }
}

void upcycled_prepare(const CtConfig& c, const std::vector<const CtMethod*>& methods,
                      const std::vector<int64_t>& seeds) {
  const ModelConfig base = config_load((fs::path(c.base) / "config.json").string());
  for (const CtMethod* m : methods)
    for (int64_t seed : seeds) {
      if (m->kind != CtKind::Upcycle) continue;
      const UpcycleOptions o = upcycle_options(*m, seed);
      const std::string dir = upcycled_dir(c, *m, seed);
      const fs::path cfg = fs::path(dir) / "config.json";
      std::error_code ec;
      if (fs::exists(cfg, ec) && config_to_json(config_load(cfg.string())) ==
                                     config_to_json(upcycle_config(base, o, c.base)))
        continue;
      fs::remove_all(dir, ec);
      fs::create_directories(fs::path(dir).parent_path(), ec);
      std::fprintf(stderr, "== upcycling %s for %s (seed %ld)\n", c.base.c_str(), m->name.c_str(),
                   long(seed));
      upcycle_write(c.base, o, dir);
    }
}

// The experiment file of one run: the continual-training file less [ct], with the base's model
// and the method's additions, its frozen tensors, one phase on the new domain replaying the
// original one, and the evaluation set filtered by the model before its first step.
toml::table experiment_derive(const toml::table& root, const CtConfig& c, const CtMethod& m,
                              int64_t seed, const std::string& run_dir,
                              const std::string& evalset) {
  toml::table d = root;
  d.erase("ct");
  toml::table& run = table_at(d, "run");
  run.insert_or_assign("dir", run_dir);
  run.insert_or_assign("seed", seed);

  const std::string from = m.kind == CtKind::Upcycle ? upcycled_dir(c, m, seed) : c.base;
  toml::table model{{"config", (fs::path(from) / "config.json").string()}, {"init_from", from}};
  for (const char* key : {"lora", "moe_ct"})
    if (const toml::node* add = m.table->get(key)) model.insert(key, *add);
  d.insert_or_assign("model", std::move(model));

  if (m.max_lr > 0) {  // a member of the method's grid of rates
    table_at(d, "schedule").insert_or_assign("max_lr", m.max_lr);
  }

  toml::table& train = table_at(d, "train");
  toml::array freeze;
  if (const toml::array* given = train["freeze"].as_array()) freeze = *given;
  for (const std::string& p : method_freeze(m)) freeze.push_back(p);
  if (!freeze.empty()) train.insert_or_assign("freeze", std::move(freeze));

  // replay_subset is always the original domain (unless the method names another): the trainer
  // measures held-out loss on the subsets its phases use, and this one must be measured.
  toml::table phase{
      {"name", c.fresh}, {"subset", c.fresh}, {"steps", c.steps}, {"replay_subset", c.original}};
  for (const auto& [k, v] : *m.table)
    if (k.str().rfind("replay", 0) == 0) phase.insert_or_assign(k, v);
  d.insert_or_assign("phases", toml::array{std::move(phase)});

  if (!evalset.empty()) {
    toml::table& ev = table_at(d, "eval");
    ev.insert_or_assign("evalset", evalset);
    ev.insert_or_assign("filter_at", "start");
  }
  return d;
}

// The experiment files of the runs, written beside their final name and renamed only once every
// run's file loads and the data fits the base: bad input leaves no file of a run changed.
class ExperimentFiles {
 public:
  ExperimentFiles() = default;
  ExperimentFiles(const ExperimentFiles&) = delete;
  ExperimentFiles& operator=(const ExperimentFiles&) = delete;
  ~ExperimentFiles() {
    std::error_code ec;
    for (const auto& [check, final] : files_) fs::remove(check, ec);
  }

  // Writes RUN/<method>/seed_<s>/experiment.toml (under a checking name) and loads it as
  // `moelab train` would; an error in it names the method and the file.
  Experiment write_load(const toml::table& d, const CtConfig& c, const CtMethod& m, int64_t seed,
                        const std::string& run_dir) {
    const std::string final = (fs::path(run_dir) / "experiment.toml").string();
    // one checking name per rank of a data-parallel study: every rank writes and loads its own
    const Collective* world = train_collective();
    const std::string check =
        (fs::path(run_dir) / (world ? fmt::format(".experiment.check.{}.toml", world->rank())
                                    : ".experiment.check.toml"))
            .string();
    std::ostringstream os;
    os << fmt::format(
        "# Written by moelab study ct from {}: method '{}' ({}), seed {}. `moelab train` runs it "
        "as "
        "is;\n# moelab study ct rewrites it on every start.\n\n",
        c.source, m.name, ct_kind_name(m.kind), seed);
    os << toml::toml_formatter{d} << "\n";
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    if (ec) fail(fmt::format("{}: cannot create the run directory ({})", run_dir, ec.message()));
    file_write_atomic(check, os.str());
    files_.emplace_back(check, final);
    try {
      Experiment x = experiment_load(check, {});
      x.source = final;
      return x;
    } catch (const Error& e) {
      std::string msg = e.what();
      if (msg.rfind(check, 0) == 0) msg = final + msg.substr(check.size());
      fail(fmt::format("{}: method '{}': {}", c.source, m.name, msg));
    }
  }

  // Every file under its final name (rank 0's; the other ranks' go).
  void commit() {
    std::error_code ec;
    for (const auto& [check, final] : files_)
      train_writer() ? fs::rename(check, final) : void(fs::remove(check, ec));
    files_.clear();
  }

 private:
  std::vector<std::pair<std::string, std::string>> files_;  // checking name, final name
};

// Total and trainable parameters of a run's model under its frozen set.
std::pair<int64_t, int64_t> params_trainable(const Experiment& x) {
  ParamLayout layout = layout_build(x.model);
  for (const std::string& p : x.freeze) layout.set_frozen(p, true);
  int64_t trainable = 0;
  for (const TensorView& t : layout.tensors) trainable += t.frozen ? 0 : t.numel;
  return {layout.total, trainable};
}

// ----------------------------------------------------------------------------
// what the runs share: the evaluation set, the base's losses

// The evaluation set of every run: [eval] evalset, or one built for the study from [ct]
// entities (frequent in the original domain, rare in the new one), or none ("").
std::string evalset_path(const toml::table& root, const CtConfig& c) {
  if (const auto given = root["eval"]["evalset"].value<std::string>()) return *given;
  return c.entities.empty() ? "" : (fs::path(c.run_dir) / "evalset.jsonl").string();
}

void evalset_build(const CtConfig& c, const std::string& path, const std::string& data) {
  if (path.empty())
    std::fprintf(stderr, "note: no [ct] entities and no [eval] evalset: no forgetting metrics\n");
  if (c.entities.empty() || fs::exists(path)) return;
  EntityBuildOptions eb;
  eb.data_dir = data;
  eb.entities = cache_path_expand(c.entities);
  eb.out = path;
  eb.subset_a = c.original;
  eb.subset_b = c.fresh;
  eb.top_a = c.top, eb.bottom_b = c.bottom;
  eb.prompt = c.prompt, eb.target = c.target;
  eb.max_samples = c.max_samples, eb.max_per_entity = c.max_per_entity;
  eb.seed = uint64_t(c.entity_seed);
  entities_build(eb);
}

// What the base losses were measured with: reused from an earlier ct.json when it matches.
ojson base_losses_cached(const CtConfig& c, const Experiment& x, const DataDir& data) {
  const ojson key = {{"base", c.base},         {"batch_size", x.batch_size},
                     {"seq_len", x.seq_len},   {"batches", x.eval_batches},
                     {"original", c.original}, {"new", c.fresh}};
  const fs::path path = fs::path(c.run_dir) / "ct.json";
  std::error_code ec;
  if (fs::exists(path, ec)) {
    const ojson old = ojson::parse(file_read(path.string()), nullptr, false);
    if (old.is_object() && old.value("base_eval", ojson()) == key && old.contains("base_val_loss"))
      return {{"base_eval", key}, {"base_val_loss", old["base_val_loss"]}};
  }
  return {{"base_eval", key}, {"base_val_loss", ct_losses(c.base, {c.original, c.fresh}, x, data)}};
}

// ----------------------------------------------------------------------------
// peak memory per run

// RUN/<method>/seed_<s>/resources.json: the run's peak RSS and training time, over all the
// sessions that trained it (a resumed run keeps the larger peak and adds its time).
void resources_record(const std::string& dir, int64_t peak, bool per_run, double seconds) {
  const fs::path path = fs::path(dir) / "resources.json";
  std::error_code ec;
  ojson r = {
      {"peak_rss_bytes", peak}, {"peak_rss_of", per_run ? "run" : "process"}, {"train_s", seconds}};
  if (fs::exists(path, ec)) {
    const ojson old = ojson::parse(file_read(path.string()), nullptr, false);
    if (old.is_object() && old.contains("peak_rss_bytes")) {
      r["peak_rss_bytes"] = std::max(peak, old["peak_rss_bytes"].get<int64_t>());
      r["train_s"] = seconds + old.value("train_s", 0.0);
    }
  }
  file_write_atomic(path.string(), r.dump(2) + "\n");
}

// ----------------------------------------------------------------------------
// the study

std::vector<int64_t> seeds_of(const toml::table& root, const CtConfig& c, const CtOptions& o) {
  if (!o.seeds.empty()) {
    for (int64_t s : o.seeds)
      if (s < 0) fail(fmt::format("--seeds: {} is not a seed >= 0", s));
    return o.seeds;
  }
  if (!c.seeds.empty()) return c.seeds;
  return {root["run"]["seed"].value_or(int64_t(1))};
}

std::vector<const CtMethod*> methods_of(const CtConfig& c, const CtOptions& o) {
  std::vector<const CtMethod*> out;
  // a method's name, or the name of its [[ct.methods]] entry (every rate of its grid)
  auto chosen = [&](const CtMethod& m, const std::string& name) {
    return m.name == name || m.family == name;
  };
  for (const CtMethod& m : c.methods)
    if (o.methods.empty() || std::any_of(o.methods.begin(), o.methods.end(),
                                         [&](const std::string& n) { return chosen(m, n); }))
      out.push_back(&m);
  for (const std::string& name : o.methods)
    if (std::none_of(c.methods.begin(), c.methods.end(),
                     [&](const CtMethod& m) { return chosen(m, name); }))
      fail(fmt::format("--methods: {} has no method named '{}'", c.source, name));
  return out;
}

// The methods of this start merged with those an earlier ct.json of the folder lists (a start
// with --methods or --seeds adds its runs, it does not drop the others'), in the file's order
// of methods, each method's runs by seed. Methods no longer in the file are dropped: their runs
// are not this study's (a start under other settings is refused before this).
ojson methods_merge(const CtConfig& c, const ojson& now) {
  const ojson old = json_file_or_null((fs::path(c.run_dir) / "ct.json").string());
  const ojson old_methods = old.is_object() && old.contains("methods") && old["methods"].is_array()
                                ? old["methods"]
                                : ojson::array();
  ojson merged = ojson::array();
  for (const CtMethod& m : c.methods) {
    auto named = [&](const ojson& list) {
      const auto it = std::find_if(list.begin(), list.end(),
                                   [&](const ojson& e) { return e.value("name", "") == m.name; });
      return it == list.end() ? ojson() : *it;
    };
    ojson entry = named(now);
    const ojson earlier = named(old_methods);
    if (entry.is_null()) {
      entry = earlier;
    } else if (earlier.is_object() && earlier.contains("runs")) {
      for (const ojson& run : earlier["runs"]) {
        const bool listed = std::any_of(entry["runs"].begin(), entry["runs"].end(),
                                        [&](const ojson& r) { return r["dir"] == run["dir"]; });
        if (!listed) {
          entry["runs"].push_back(run);
        }
      }
    }
    if (entry.is_null()) {
      continue;
    }
    std::vector<ojson> runs(entry["runs"].begin(), entry["runs"].end());
    std::sort(runs.begin(), runs.end(), [](const ojson& a, const ojson& b) {
      return a.value("seed", int64_t(0)) < b.value("seed", int64_t(0));
    });
    entry["runs"] = runs;
    merged.push_back(entry);
  }
  return merged;
}

// RUN/ct.json: what the report reads besides the runs themselves.
void study_record(const CtConfig& c, const std::vector<CtRun>& runs, const std::string& evalset,
                  const ojson& base) {
  ojson methods = ojson::array();
  for (const CtRun& r : runs) {
    auto it = std::find_if(methods.begin(), methods.end(),
                           [&](const ojson& m) { return m["name"] == r.method->name; });
    if (it == methods.end()) {
      const auto [total, trainable] = params_trainable(r.x);
      methods.push_back({{"name", r.method->name},
                         {"family", r.method->family},
                         {"max_lr", r.x.schedule.max_lr},
                         {"kind", ct_kind_name(r.method->kind)},
                         {"params_total", total},
                         {"params_trainable", trainable},
                         {"method", toml_to_json(*r.method->table)},
                         {"runs", ojson::array()}});
      it = methods.end() - 1;
    }
    (*it)["runs"].push_back({{"seed", r.seed}, {"dir", r.dir}});
  }
  methods = methods_merge(c, methods);
  ojson compress = ojson::array();
  for (const CtCompress& k : c.compress)
    compress.push_back({{"name", k.name},
                        {"from", k.from},
                        {"delta", k.spec},
                        {"base", k.options.ders.base},
                        {"select", k.options.ders.topk ? "topk" : "random"}});
  const ojson study = {{"experiment", c.source},
                       {"base", c.base},
                       {"original", c.original},
                       {"new", c.fresh},
                       {"steps", c.steps},
                       {"evalset", evalset},
                       {"base_eval", base["base_eval"]},
                       {"base_val_loss", base["base_val_loss"]},
                       {"methods", methods},
                       {"compress", compress},
                       {"compare", c.compare}};
  file_write_atomic((fs::path(c.run_dir) / "ct.json").string(), study.dump(2) + "\n");
}

// What the study's runs compute, for RUN/settings.json: the file as read, methods and
// compressions by name, less the seeds (a study may grow) and what changes no result.
Settings ct_settings(const toml::table& root) {
  return settings_flatten(toml_to_json(root), {"ct.methods", "ct.compress"},
                          settings_skip({"ct.seeds", "ct.compare"}));
}

// Trains the runs one after another (study/queue.hpp), each run's peak memory and training time
// recorded in its folder. Returns 130 when interrupted.
int runs_train(const CtConfig& c, const std::vector<CtRun>& runs,
               std::vector<std::string>& failed) {
  std::vector<QueueRun> queue;
  for (const CtRun& r : runs) {
    queue.push_back({r.dir, fmt::format("{} seed {}", ct_kind_name(r.method->kind), r.seed),
                     [&r] { return r.x; }});
  }
  QueueOptions o;
  o.study = "ct";
  o.others = "the other runs";
  o.page_dir = c.run_dir;
  o.train = [&c, &runs](const Experiment& x, bool resume, RunFailure* failure) {
    // An upcycled run logs how far its experts moved from the dense FFN at every evaluation.
    TrainerHooks extra;
    const auto run = std::find_if(runs.begin(), runs.end(),
                                  [&](const CtRun& r) { return r.x.run_dir == x.run_dir; });
    if (run != runs.end() && run->method->kind == CtKind::Upcycle) {
      extra.push_back(ct_expert_cosine_hook(c.base));
    }
    const bool per_run = ct_rss_peak_reset();
    const double t0 = time_now_s();
    const int rc = study_train(x, resume, failure, std::move(extra));
    if (train_writer()) {
      resources_record(x.run_dir, ct_rss_peak_now(), per_run, time_now_s() - t0);
    }
    return rc;
  };
  QueueResult done = queue_run(queue, o);
  failed = std::move(done.failed);
  return done.status;
}

}  // namespace

// ----------------------------------------------------------------------------

std::string ct_run_dir(const std::string& config, const std::vector<std::string>& overrides) {
  const toml::table root = ct_file_parse(config, overrides);
  return root["run"]["dir"].value_or(std::string("runs/ct"));
}

// In a data-parallel study every rank trains each run; rank 0 alone writes the study's files
// (upcycled starting points, experiment files, the evaluation set, ct.json, measurements,
// report), and the others wait at a barrier for what they read next.
int ct_run(const std::string& config, const CtOptions& o) {
  const bool writer = train_writer();
  const toml::table root = ct_file_parse(config, o.overrides);
  ct_sections_check(root, config);
  const CtConfig c = ct_config_read(root, config);
  const std::vector<const CtMethod*> methods = methods_of(c, o);
  const std::vector<int64_t> seeds = seeds_of(root, c, o);
  base_check(c);
  upcycled_check(c, methods, seeds);
  if (const auto dir = root["data"]["dir"].value<std::string>())  // the base fits the data
    data_check(c, data_open(*dir));
  // A study started under other settings is refused before anything is written (a file whose
  // runs' experiments are bad is refused after this, in the loop below).
  const Settings settings = ct_settings(root);
  if (o.restart) {
    if (writer) {
      std::set<std::string> names =
          study_listed((fs::path(c.run_dir) / "ct.json").string(), "methods", "name");
      for (const CtMethod& m : c.methods) names.insert(m.name);
      study_discard(c.run_dir, names, {"compress", "ct.json", "report", "settings.json"},
                    !root["eval"]["evalset"].value<std::string>().has_value(), "method(s)' runs");
    }
  } else {
    settings_check(c.run_dir, settings,
                   "another [run] dir, or --restart to discard the runs there");
  }
  train_barrier();

  // Every run's experiment is derived and checked before anything is trained (the upcycled
  // starting points first: the experiments read their configs).
  if (writer) upcycled_prepare(c, methods, seeds);
  train_barrier();
  const std::string evalset = evalset_path(root, c);
  std::vector<CtRun> runs;
  ExperimentFiles files;
  for (int64_t seed : seeds)
    for (const CtMethod* m : methods) {
      const std::string dir = fmt::format("{}/seed_{}", m->name, seed);
      const std::string run_dir = (fs::path(c.run_dir) / dir).string();
      const toml::table d = experiment_derive(root, c, *m, seed, run_dir, evalset);
      runs.push_back({m, seed, dir, files.write_load(d, c, *m, seed, run_dir)});
    }
  const Experiment& x0 = runs.front().x;
  threads_set(x0.threads > 0 ? x0.threads : omp_get_num_procs());
  const DataDir data = data_open(x0.data_dir);
  data_check(c, data);
  files.commit();

  if (writer) {
    evalset_build(c, evalset, x0.data_dir);
    study_record(c, runs, evalset, base_losses_cached(c, x0, data));
    settings_record(c.run_dir, settings, "moelab study ct");
  }
  train_barrier();
  std::vector<std::string> failed;  // runs, then measurements
  if (runs_train(c, runs, failed) == 130) return 130;
  train_barrier();  // rank 0's last checkpoints are written
  if (!writer) return failed.empty() ? 0 : kStudyFailedRuns;
  const size_t runs_failed = failed.size();
  for (const std::string& f : ct_measure_all(c, runs, data)) failed.push_back(f);
  std::string report;
  if (o.report) {
    try {
      report = ct_report_write(c.run_dir, "", o.plots);
    } catch (const std::exception& e) {
      std::fprintf(stderr,
                   "moelab ct: the runs are kept, but the report failed: %s (moelab study ct %s "
                   "--report-only, with the same --set, writes it)\n",
                   one_line(e.what()).c_str(), config.c_str());
      return 1;
    }
  }
  if (failed.empty()) return 0;
  const size_t measures_failed = failed.size() - runs_failed;
  return study_failed_end(
      fmt::format(
          "moelab ct: {} of {} runs failed{}", runs_failed, runs.size(),
          measures_failed > 0 ? fmt::format(", {} measurements failed", measures_failed) : ""),
      failed, report.empty() ? "" : "; the report lists why: " + report);
}

}  // namespace moelab
