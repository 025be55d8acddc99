#include "train/experiment.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>
#include <set>

#include "core/error.hpp"
#include "train/toml_file.hpp"

namespace moelab {

namespace {

using json = nlohmann::json;
constexpr int64_t kMaxSteps = int64_t(1) << 40, kMaxTokens = int64_t(1) << 60;

// ----------------------------------------------------------------------------
// --set overrides

}  // namespace

void experiment_override_apply(toml::table& root, const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0)
    fail(fmt::format("--set '{}': expected key=value (e.g. train.batch_size=16)", kv));
  const std::string path = kv.substr(0, eq), text = kv.substr(eq + 1);
  // The value as TOML (numbers, booleans, strings, arrays); bare words become strings.
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"v", text}};
  }
  std::vector<std::string> parts;
  for (size_t a = 0, b; a <= path.size(); a = b + 1) {
    b = path.find('.', a);
    if (b == std::string::npos) b = path.size();
    parts.push_back(path.substr(a, b - a));
  }
  toml::node* cur = &root;
  for (size_t i = 0; i + 1 < parts.size(); i++) {
    if (auto* t = cur->as_table()) {
      if (!t->contains(parts[i])) t->insert(parts[i], toml::table{});
      cur = t->get(parts[i]);
    } else if (auto* a = cur->as_array()) {
      size_t idx = 0;
      if (std::sscanf(parts[i].c_str(), "%zu", &idx) != 1 || idx >= a->size())
        fail(fmt::format("--set {}: '{}' is not an index of that array", path, parts[i]));
      cur = a->get(idx);
    } else {
      fail(fmt::format("--set {}: '{}' is not a table", path, parts[i]));
    }
  }
  auto* t = cur->as_table();
  if (!t) fail(fmt::format("--set {}: the parent is not a table", path));
  // A section or an array of tables is replaced only by its own kind: `--set train=5` would
  // silently drop every key of [train].
  const toml::node& value = *parsed.get("v");
  if (const toml::node* old = t->get(parts.back());
      old && (old->is_table() || old->is_array_of_tables()) && old->type() != value.type())
    fail(fmt::format("--set {}: '{}' is a {}; set one of its keys (e.g. {}.KEY=VALUE)", path, path,
                     old->is_table() ? "table" : "list of tables", path));
  if (parts.size() == 1 && !value.is_table())
    fail(fmt::format("--set {}: not a key; give section.key=value (e.g. train.batch_size=16)",
                     path));
  t->insert_or_assign(parts.back(), value);
}

namespace {

// ----------------------------------------------------------------------------
// one function per section, in the order their errors are reported

void read_run(ConfigSection run, Experiment& x) {
  run.get("dir", x.run_dir);
  run.get("seed", x.seed);
  run.get("threads", x.threads);
  run.get("log_every", x.log_every);
  run.get("peak_gflops", x.peak_gflops);
  run.finish();
}

// [model]: "config" names a model JSON; "init_from" a checkpoint; any other key is a model key
// on top of the JSON.
void read_model(const json* mt, Experiment& x) {
  const std::string& path = x.source;
  if (!mt) fail(fmt::format("{}: no [model] section", path));
  json mj = json::object();
  for (auto& [key, v] : mt->items()) {
    if (key == "config") {
      if (!v.is_string()) fail(fmt::format("{}: 'model.config' must be a string", path));
      const std::string file = v.get<std::string>();
      std::ifstream f(file);
      if (!f) fail(fmt::format("{}: 'model.config': {}: cannot open", path, file));
      json base = json::parse(f, nullptr, false);
      if (base.is_discarded()) fail(fmt::format("{}: invalid JSON", file));
      if (base.contains("model")) base = base["model"];
      for (auto& [bk, bv] : base.items())
        if (!mj.contains(bk)) mj[bk] = bv;
    } else if (key == "init_from") {
      if (!v.is_string()) fail(fmt::format("{}: 'model.init_from' must be a string", path));
      x.init_from = v.get<std::string>();
    } else {
      mj[key] = v;
    }
  }
  x.model = config_from_json(mj, path + ": [model]");
}

void read_data(ConfigSection data, Experiment& x) {
  data.get("dir", x.data_dir);
  data.get("seq_len", x.seq_len);
  data.finish();
  if (x.data_dir.empty()) fail(fmt::format("{}: 'data.dir' is required", x.source));
}

void read_train(ConfigSection train, Experiment& x) {
  train.get("batch_size", x.batch_size);
  train.get("grad_accum", x.grad_accum);
  train.get("clip", x.clip);
  train.get("skip_nonfinite", x.skip_nonfinite);
  train.get("max_skips", x.max_skips);
  train.get("freeze", x.freeze);
  train.get("zero", x.zero);
  train.finish();
  // A pattern that matches no tensor is refused by the trainer, which knows the model's names.
  for (const std::string& p : x.freeze) {
    try {
      std::regex re(p);
    } catch (const std::regex_error&) {
      train.bad("freeze", fmt::format("pattern '{}' is not a valid regular expression", p));
    }
  }
}

void read_optimizer(ConfigSection opt, Experiment& x) {
  opt.get("beta1", x.optimizer.beta1);
  opt.get("beta2", x.optimizer.beta2);
  opt.get("eps", x.optimizer.eps);
  opt.get("weight_decay", x.optimizer.weight_decay);
  opt.finish();
}

// [schedule]: kind and shape by name.
void read_schedule(ConfigSection sch, Experiment& x) {
  std::string kind = "wsd", shape = "cosine";
  sch.get("kind", kind);
  sch.get("max_lr", x.schedule.max_lr);
  sch.get("min_lr", x.schedule.min_lr);
  sch.get("warmup_steps", x.schedule.warmup_steps);
  sch.get("decay_steps", x.schedule.decay_steps);
  sch.get("decay_shape", shape);
  sch.get("decay_at", x.decay_at);
  sch.finish();
  if (kind == "wsd")
    x.schedule.kind = ScheduleKind::Wsd;
  else if (kind == "cosine")
    x.schedule.kind = ScheduleKind::Cosine;
  else if (kind == "constant")
    x.schedule.kind = ScheduleKind::Constant;
  else
    sch.bad("kind", "must be \"wsd\", \"cosine\" or \"constant\"");
  if (shape == "cosine")
    x.schedule.shape = DecayShape::Cosine;
  else if (shape == "linear")
    x.schedule.shape = DecayShape::Linear;
  else
    sch.bad("decay_shape", "must be \"cosine\" or \"linear\"");
}

// A phase's replay keys: those of its kind only, each in range.
void phase_replay_check(const ConfigSection& ph, const PhaseConfig& p, const Experiment& x) {
  static const char* focused_keys[] = {"replay_every", "replay_exit", "replay_repeat",
                                       "replay_memory"};
  if (p.replay == "mix") {
    for (const char* k : focused_keys)
      if (ph.has(k)) ph.bad(k, "applies to replay = \"focused\" only");
    if (p.replay_ratio < 0 || p.replay_ratio >= 1) ph.bad("replay_ratio", "must be in [0, 1)");
    if (p.replay_ratio > 0 && p.replay_subset.empty())
      ph.bad("replay_subset", "is required with a replay_ratio");
    return;
  }
  if (p.replay != "focused") ph.bad("replay", "must be \"mix\" or \"focused\"");
  if (p.replay_ratio != 0)
    ph.bad("replay_ratio", "applies to replay = \"mix\" only (focused replay: replay_every)");
  if (p.replay_every < 1) ph.bad("replay_every", "must be at least 1 (steps between replays)");
  if (p.replay_exit < 1 || p.replay_exit > (int64_t(1) << 30))
    ph.bad("replay_exit", "must be in [1, 2^30] (replays before a sample leaves the memory)");
  if (p.replay_repeat < 1 || p.replay_repeat > 1000)
    ph.bad("replay_repeat", "must be in [1, 1000] (updates on each replay batch)");
  // A replay batch is one training batch of distinct sequences.
  const int64_t batch = x.batch_size * x.grad_accum;
  if (p.replay_memory < batch || p.replay_memory > (int64_t(1) << 32))
    ph.bad("replay_memory",
           fmt::format("must be in [{}, 2^32] sequences: at least one batch (train.batch_size x "
                       "train.grad_accum)",
                       batch));
}

// [[phases]], in order.
void read_phases(const json* phases, Experiment& x) {
  const std::string& path = x.source;
  if (!phases || !phases->is_array() || phases->empty())
    fail(fmt::format("{}: no [[phases]]", path));
  for (size_t i = 0; i < phases->size(); i++) {
    const json& t = (*phases)[i];
    if (!t.is_object()) fail(fmt::format("{}: 'phases[{}]' must be a table", path, i));
    ConfigSection ph(&t, fmt::format("phases[{}]", i), path);
    PhaseConfig p;
    p.name = fmt::format("{}", i);
    ph.get("name", p.name);
    ph.get("subset", p.subset);
    ph.get("steps", p.steps);
    ph.get("tokens", p.tokens);
    ph.get("replay", p.replay);
    ph.get("replay_subset", p.replay_subset);
    ph.get("replay_ratio", p.replay_ratio);
    ph.get("replay_every", p.replay_every);
    ph.get("replay_exit", p.replay_exit);
    ph.get("replay_repeat", p.replay_repeat);
    ph.get("replay_memory", p.replay_memory);
    ph.finish();
    if (p.subset.empty()) ph.bad("subset", "is required");
    if (p.steps < 0) ph.bad("steps", "must be positive");
    if (p.tokens < 0) ph.bad("tokens", "must be positive");
    if ((p.steps > 0) == (p.tokens > 0))
      ph.bad("steps", "give exactly one of steps or tokens (> 0)");
    // Bounds that keep every step and token count an exact int64 (far beyond any real run).
    if (p.steps > kMaxSteps) ph.bad("steps", fmt::format("must be at most {}", kMaxSteps));
    if (p.tokens > kMaxTokens) ph.bad("tokens", fmt::format("must be at most {}", kMaxTokens));
    phase_replay_check(ph, p, x);
    x.phases.push_back(p);
  }
}

void read_checkpoint(ConfigSection ck, Experiment& x) {
  ck.get("every", x.checkpoint_every);
  ck.get("keep_last", x.keep_last);
  ck.finish();
}

// [eval] (after [[phases]]: filter_after names one).
void read_eval(ConfigSection ev, Experiment& x) {
  ev.get("every", x.eval_every);
  ev.get("batches", x.eval_batches);
  ev.get("evalset", x.evalset);
  ev.get("filter_at", x.filter_at);
  ev.get("filter_after", x.filter_after);
  ev.get("min_recalled", x.min_recalled);
  ev.get("forgetting_every", x.forgetting_every);
  ev.get("forgetting_batch", x.forgetting_batch);
  ev.finish();
  if (x.filter_at == "start") {
    if (ev.has("filter_after")) ev.bad("filter_after", "applies to filter_at = \"phase_end\" only");
    if (x.init_from.empty())
      ev.bad("filter_at",
             "= \"start\" keeps what the model of 'model.init_from' recalls; give a base "
             "checkpoint there (a fresh model recalls nothing)");
  } else if (x.filter_at != "phase_end") {
    ev.bad("filter_at", "must be \"phase_end\" or \"start\"");
  }
  if (x.min_recalled < 0) ev.bad("min_recalled", "must be >= 0 (0: never stop)");
  if (x.filter_after.empty()) x.filter_after = x.phases.front().name;
  if (std::none_of(x.phases.begin(), x.phases.end(),
                   [&](const PhaseConfig& p) { return p.name == x.filter_after; }))
    ev.bad("filter_after", fmt::format("names no phase: {}", x.filter_after));
  if (x.forgetting_every < 0 || x.forgetting_batch < 1)
    ev.bad("forgetting_every", "must be >= 0 (and forgetting_batch >= 1)");
}

// The WSD decay's first step from decay_at: the end of the run, a phase's end, or a step.
void decay_start_resolve(Experiment& x) {
  const std::string& path = x.source;
  if (x.decay_at == "end") return;
  int64_t at = -1;
  if (x.decay_at.rfind("phase:", 0) == 0) {
    int64_t end = 0, phase_end = -1;
    for (const PhaseConfig& p : x.phases) {
      end += x.phase_steps(p);
      if (p.name == x.decay_at.substr(6)) phase_end = end;
    }
    if (phase_end < 0)
      fail(fmt::format("{}: 'schedule.decay_at' names no phase: {}", path, x.decay_at));
    at = phase_end - x.schedule.decay_steps;
    if (at < 0)
      fail(
          fmt::format("{}: 'schedule.decay_steps' ({}) is longer than the run up to the end "
                      "of phase {} ({} steps)",
                      path, x.schedule.decay_steps, x.decay_at.substr(6), phase_end));
  } else if (std::sscanf(x.decay_at.c_str(), "%ld", &at) != 1 || at < 0) {
    fail(fmt::format("{}: 'schedule.decay_at' must be \"end\", \"phase:NAME\" or a step", path));
  }
  x.schedule.decay_start = at;
}

// Values that only make sense together, and the schedule that spans the phases.
void experiment_check(Experiment& x) {
  const std::string& path = x.source;
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) fail(fmt::format("{}: {}", path, msg));
  };
  need(x.seq_len > 0 && x.seq_len <= x.model.max_position_embeddings,
       "'data.seq_len' must be in [1, model max_position_embeddings]");
  need(x.batch_size > 0, "'train.batch_size' must be positive");
  need(x.grad_accum > 0, "'train.grad_accum' must be positive");
  // With these bounds no step or token count of the run can overflow.
  need(x.batch_size <= kMaxTokens / x.seq_len / x.grad_accum,
       fmt::format("'train.batch_size' x 'train.grad_accum' x 'data.seq_len' must be at most {}",
                   kMaxTokens));
  need(int64_t(x.phases.size()) <= kMaxTokens / kMaxSteps,
       fmt::format("at most {} [[phases]]", kMaxTokens / kMaxSteps));
  need(x.clip >= 0, "'train.clip' must be >= 0 (0 = no clipping)");
  need(x.log_every > 0, "'run.log_every' must be positive");
  need(x.peak_gflops >= 0 && std::isfinite(x.peak_gflops),
       "'run.peak_gflops' must be >= 0 (0 = measure)");
  need(x.max_skips >= 0, "'train.max_skips' must be >= 0");
  need(x.checkpoint_every >= 0 && x.eval_every >= 0, "'every' values must be >= 0");
  need(x.keep_last >= 0, "'checkpoint.keep_last' must be >= 0");
  // The schedule spans the whole run; the WSD decay sits at the end or at a phase's end.
  x.schedule.total_steps = x.total_steps();
  decay_start_resolve(x);
  x.schedule.validate(path + ": [schedule]");
}

}  // namespace

// ----------------------------------------------------------------------------
// the experiment

int64_t Experiment::phase_steps(const PhaseConfig& p) const {
  return p.steps > 0 ? p.steps : (p.tokens + tokens_per_step() - 1) / tokens_per_step();
}

int64_t Experiment::total_steps() const {
  int64_t n = 0;
  for (const PhaseConfig& p : phases) n += phase_steps(p);
  return n;
}

Experiment::PhaseAt Experiment::phase_at(int64_t steps_done) const {
  size_t index = 0;
  int64_t end = 0;
  for (; index < phases.size(); index++) {
    end += phase_steps(phases[index]);
    if (steps_done < end) {
      break;
    }
  }
  return {index, end};
}

Experiment experiment_load(const std::string& path, const std::vector<std::string>& overrides) {
  toml::table table = toml_file_parse(path);
  for (const std::string& kv : overrides) experiment_override_apply(table, kv);
  const json root = toml_to_json(table);

  Experiment x;
  x.source = path;
  x.text = root.dump();
  const std::set<std::string> sections = {"run",      "model",  "data",       "train", "optimizer",
                                          "schedule", "phases", "checkpoint", "eval"};
  const std::set<std::string> above = {"study"};  // read by study/
  for (const auto& [k, v] : root.items()) {
    if (!sections.contains(k) && !above.contains(k))
      fail(fmt::format("{}: unknown section '{}'", path, k));
    if (k != "phases" && !v.is_object()) fail(fmt::format("{}: '{}' must be a table", path, k));
  }
  auto at = [&](const char* name) -> const json* {
    const auto it = root.find(name);
    return it == root.end() ? nullptr : &*it;
  };
  auto section = [&](const char* name) { return ConfigSection(at(name), name, path); };

  read_run(section("run"), x);
  read_model(at("model"), x);
  read_data(section("data"), x);
  read_train(section("train"), x);
  read_optimizer(section("optimizer"), x);
  read_schedule(section("schedule"), x);
  read_phases(at("phases"), x);
  read_checkpoint(section("checkpoint"), x);
  read_eval(section("eval"), x);
  for (const std::string& name : above)
    if (const json* t = at(name.c_str())) x.sections_above[name] = *t;
  experiment_check(x);
  return x;
}

}  // namespace moelab
