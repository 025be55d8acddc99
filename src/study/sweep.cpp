#include "study/sweep.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/rng.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "data/dataset.hpp"
#include "model/model.hpp"
#include "study/ct_config.hpp"
#include "study/failure.hpp"
#include "study/queue.hpp"
#include "study/report.hpp"
#include "study/settings.hpp"
#include "study/study_page.hpp"
#include "train/collective.hpp"
#include "train/experiment.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ----------------------------------------------------------------------------
// the file

struct SweepConfig {
  std::string source, run_dir = "runs/sweep";
  toml::table root;
  std::string base, subset;
  std::vector<double> budgets, sparsities, aux_coefs, bias_rates;
  std::vector<int64_t> sizes, seeds;
  std::vector<int64_t> repeat_seeds;  // the grid at repeat_budget again under these seeds
  double repeat_budget = 0;
  std::vector<int64_t> extra_sizes;  // widths added at extra_budget only
  double extra_budget = 0;
  int64_t top_k = 1;
  double max_epochs = 1.0;
  int64_t batch_size = 8, seq_len = 256;  // from [train] and [data], for D = steps x tokens/step
};

SweepConfig config_read(const std::string& path, const std::vector<std::string>& overrides) {
  SweepConfig c;
  c.source = path;
  c.root = ct_file_parse(path, overrides);
  study_sections_check(c.root, path, "sweep",
                       "'model' comes from [sweep] (base, sizes, sparsities; one phase on subset "
                       "for the budget's tokens)",
                       "'phases' comes from [sweep] (base, sizes, sparsities; one phase on subset "
                       "for the budget's tokens)");
  c.run_dir = c.root["run"]["dir"].value_or(c.run_dir);
  c.batch_size = c.root["train"]["batch_size"].value_or(c.batch_size);
  c.seq_len = c.root["data"]["seq_len"].value_or(c.seq_len);
  const json j = toml_to_json(*c.root["sweep"].as_table());
  ConfigSection s(&j, "sweep", path);
  s.get("base", c.base);
  s.get("subset", c.subset);
  s.get("budgets", c.budgets);
  s.get("sparsities", c.sparsities);
  s.get("aux_coefs", c.aux_coefs);
  s.get("bias_rates", c.bias_rates);
  s.get("sizes", c.sizes);
  s.get("seeds", c.seeds);
  s.get("top_k", c.top_k);
  s.get("max_epochs", c.max_epochs);
  s.get("repeat_seeds", c.repeat_seeds);
  s.get("repeat_budget", c.repeat_budget);
  s.get("extra_sizes", c.extra_sizes);
  s.get("extra_budget", c.extra_budget);
  s.finish();
  if (c.base.empty()) s.bad("base", "is required (a dense model config JSON)");
  if (c.subset.empty()) s.bad("subset", "is required (the data subset trained on)");
  if (c.budgets.empty()) s.bad("budgets", "must list at least one budget (FLOPs)");
  if (c.sparsities.empty()) c.sparsities = {0.0};
  if (c.sizes.empty()) s.bad("sizes", "must list at least one hidden width");
  if (c.seeds.empty()) c.seeds = {c.root["run"]["seed"].value_or(int64_t(1))};
  if (c.top_k < 1) s.bad("top_k", "must be >= 1");
  if (!(c.max_epochs > 0)) s.bad("max_epochs", "must be positive");
  for (double b : c.budgets)
    if (!(b > 0) || !std::isfinite(b))
      s.bad("budgets", fmt::format("{} is not a positive budget", b));
  for (double x : c.sparsities)
    if (!(x >= 0 && x < 1)) s.bad("sparsities", fmt::format("{} is not in [0, 1)", x));
  for (int64_t d : c.sizes)
    if (d < 1) s.bad("sizes", fmt::format("{} is not a hidden width", d));
  for (double x : c.aux_coefs)
    if (!(x >= 0)) s.bad("aux_coefs", fmt::format("{} is not a coefficient >= 0", x));
  for (double x : c.bias_rates)
    if (!(x >= 0)) s.bad("bias_rates", fmt::format("{} is not a rate >= 0", x));
  if (!c.repeat_seeds.empty() &&
      std::find(c.budgets.begin(), c.budgets.end(), c.repeat_budget) == c.budgets.end())
    s.bad("repeat_budget", fmt::format("{:g} is not one of 'sweep.budgets' (repeat_seeds repeats "
                                       "that budget's grid)",
                                       c.repeat_budget));
  if (!c.extra_sizes.empty() &&
      std::find(c.budgets.begin(), c.budgets.end(), c.extra_budget) == c.budgets.end())
    s.bad("extra_budget", fmt::format("{:g} is not one of 'sweep.budgets' (extra_sizes add "
                                      "widths at that budget)",
                                      c.extra_budget));
  for (int64_t d : c.extra_sizes)
    if (d < 1 || std::find(c.sizes.begin(), c.sizes.end(), d) != c.sizes.end())
      s.bad("extra_sizes", fmt::format("{} is not a new hidden width", d));
  for (int64_t seed : c.repeat_seeds)
    if (std::find(c.seeds.begin(), c.seeds.end(), seed) != c.seeds.end())
      s.bad("repeat_seeds", fmt::format("seed {} is already in 'sweep.seeds'", seed));
  return c;
}

// ----------------------------------------------------------------------------
// the grid

// E = K / (1 - S), which must be an integer (S = 0.3 with K = 1 has none).
int64_t experts_for(double S, int64_t K, const std::string& source) {
  const double E = double(K) / (1.0 - S);
  const int64_t e = std::llround(E);
  if (std::abs(E - double(e)) > 1e-6 * E)
    fail(
        fmt::format("{}: 'sweep.sparsities': S = {} with top_k = {} needs E = {:.4g} experts, not "
                    "an integer (S = (E - K) / E)",
                    source, S, K, E));
  return e;
}

// The base scaled to hidden width d (heads and the FFN width in proportion, head_dim kept),
// with E experts of the full FFN width, top-k K: N_active stays put as S grows, N grows.
ModelConfig model_for(const ModelConfig& base, int64_t d, int64_t E, int64_t K, double aux,
                      double bias_rate, const std::string& source) {
  ModelConfig m = base;
  const int64_t hd = base.head_dim;
  if (d % hd != 0)
    fail(
        fmt::format("{}: 'sweep.sizes': width {} is not a multiple of head_dim {}", source, d, hd));
  const int64_t group = std::max<int64_t>(1, base.num_attention_heads / base.num_key_value_heads);
  m.hidden_size = d;
  m.num_attention_heads = d / hd;
  m.num_key_value_heads = std::max<int64_t>(1, m.num_attention_heads / group);
  m.intermediate_size = std::max<int64_t>(1, base.intermediate_size * d / base.hidden_size);
  m.num_local_experts = E;
  m.num_experts_per_tok = E > 1 ? K : 1;
  m.ffn_type = E > 1 ? FfnKind::Moe : FfnKind::Dense;
  m.router_aux_loss_coef = aux;
  m.router_balance.bias_rate = E > 1 ? bias_rate : 0.0;
  config_validate(m, source);
  return m;
}

std::string budget_name(double b) {
  return fmt::format("{:.2g}", b);
}

struct JobAxes {
  double budget = 0, sparsity = 0, aux = 0, rate = 0;
  int64_t size = 0, seed = 1;
};

SweepJob job_make(const SweepConfig& c, const ModelConfig& base, const JobAxes& x, bool name_aux,
                  bool name_rate, uint64_t train_sequences) {
  const int64_t per_step = c.batch_size * c.seq_len;
  SweepJob j;
  j.budget = x.budget, j.sparsity = x.sparsity, j.size = x.size, j.aux_coef = x.aux;
  j.bias_rate = x.rate, j.seed = x.seed;
  j.top_k = c.top_k;
  j.experts = experts_for(x.sparsity, c.top_k, c.source);
  j.model = model_for(base, x.size, j.experts, c.top_k, x.aux, x.rate, c.source);
  j.flops_per_token = config_flops(j.model, c.seq_len).train_per_token;
  j.steps = int64_t(std::floor(x.budget / j.flops_per_token / double(per_step)));
  j.tokens = j.steps * per_step;
  const ParamCounts pc = config_count(j.model);
  j.params = pc.total, j.active = pc.active;
  // The scaling-law literature's N: no input embedding, no output head.
  j.params_nonembed = pc.total - pc.embedding - pc.unembedding;
  j.active_nonembed =
      pc.active - j.model.vocab_size * j.model.hidden_size;  // the head, tied or not
  j.epochs = double(j.steps * c.batch_size) / double(std::max<uint64_t>(1, train_sequences));
  j.name = fmt::format("C{}_S{:g}_d{}{}{}_s{}", budget_name(x.budget), x.sparsity, x.size,
                       name_aux ? fmt::format("_aux{:g}", x.aux) : "",
                       name_rate ? fmt::format("_bias{:g}", x.rate) : "", x.seed);
  if (j.steps < 1)
    fail(
        fmt::format("{}: 'sweep.budgets': {:.3g} FLOPs is too small for one step of {} (S {}, "
                    "{:.3g} FLOPs per step)",
                    c.source, x.budget, j.name, x.sparsity, j.flops_per_token * double(per_step)));
  if (j.epochs > c.max_epochs)
    fail(
        fmt::format("{}: {} needs {:.2f} passes over subset '{}' (max_epochs {}): a smaller "
                    "budget, or more data",
                    c.source, j.name, j.epochs, c.subset, c.max_epochs));
  return j;
}

// Every budget x sparsity x width x aux x bias rate x seed, then extra_sizes at extra_budget (a
// budget whose optimum lies below the shared widths), then the grid at repeat_budget under each
// of repeat_seeds (the noise floor at one budget without the cost of every budget).
std::vector<SweepJob> plan_build(const SweepConfig& c, uint64_t train_sequences) {
  const ModelConfig base = config_load(c.base);
  if (base.num_local_experts != 1)
    fail(fmt::format("{}: 'sweep.base': {} must be a dense model (it has {} experts)", c.source,
                     c.base, base.num_local_experts));
  const std::vector<double> auxes =
      c.aux_coefs.empty() ? std::vector<double>{base.router_aux_loss_coef} : c.aux_coefs;
  const std::vector<double> rates =
      c.bias_rates.empty() ? std::vector<double>{base.router_balance.bias_rate} : c.bias_rates;
  std::vector<SweepJob> jobs;
  auto grid = [&](double C, const std::vector<int64_t>& sizes, const std::vector<int64_t>& seeds) {
    for (double S : c.sparsities)
      for (int64_t d : sizes)
        for (double aux : auxes)
          for (double rate : rates)
            for (int64_t seed : seeds) {
              const JobAxes x{C, S, aux, rate, d, seed};
              jobs.push_back(
                  job_make(c, base, x, auxes.size() > 1, rates.size() > 1, train_sequences));
            }
  };
  for (double C : c.budgets) {
    grid(C, c.sizes, c.seeds);
  }
  if (!c.extra_sizes.empty()) {
    grid(c.extra_budget, c.extra_sizes, c.seeds);
  }
  if (!c.repeat_seeds.empty()) {
    grid(c.repeat_budget, c.sizes, c.repeat_seeds);
  }
  return jobs;
}

uint64_t train_sequences(const SweepConfig& c, const DataDir& data) {
  if (std::find(data.subset_names.begin(), data.subset_names.end(), c.subset) ==
      data.subset_names.end())
    fail(fmt::format("{}: 'sweep.subset': no subset '{}' in {}", c.source, c.subset, data.dir));
  return DataLoader(data, c.subset, "train", c.seq_len, 0).sequences();
}

std::string data_dir_of(const SweepConfig& c) {
  const auto d = c.root["data"]["dir"].value<std::string>();
  if (!d) fail(fmt::format("{}: 'data.dir' is required", c.source));
  return *d;
}

// Training tokens per second of one step of `m` (forward and backward, no optimizer) on
// synthetic tokens: what the time estimates use.
double measure_tokens_per_s(const ModelConfig& m, int64_t B, int64_t T) {
  Model<float> model(m, B, T);
  model.init_weights(1);
  std::vector<int32_t> tok(size_t(B * T)), tgt(size_t(B * T));
  for (size_t i = 0; i < tok.size(); i++)
    tok[i] = int32_t(rng_u64(1, 0, i) % uint64_t(m.vocab_size)),
    tgt[i] = int32_t(rng_u64(1, 1, i) % uint64_t(m.vocab_size));
  model.zero_grad();
  model.forward(tok, tgt), model.backward();  // warm-up
  const double t0 = time_now_s();
  model.forward(tok, tgt), model.backward();
  return double(B * T) / std::max(1e-9, time_now_s() - t0);
}

}  // namespace

// ----------------------------------------------------------------------------
// plan

void sweep_plan_print(const std::string& config, const SweepPlanOptions& o) {
  const SweepConfig c = config_read(config, o.overrides);
  const DataDir data = data_open(data_dir_of(c));
  const std::vector<SweepJob> jobs = plan_build(c, train_sequences(c, data));
  threads_set(c.root["run"]["threads"].value_or(0) > 0 ? c.root["run"]["threads"].value_or(0)
                                                       : omp_get_num_procs());
  std::map<std::string, double> speed;  // per model: tokens/s
  fmt::print("{:<28} {:>9} {:>9} {:>7} {:>4} {:>9} {:>8} {:>7} {:>6} {:>8}\n", "job", "N",
             "N_active", "S", "E", "D", "D/N", "steps", "epochs", "time");
  double total_s = 0;
  for (const SweepJob& j : jobs) {
    const std::string key = config_to_json(j.model).dump();
    if (o.measure && !speed.contains(key))
      speed[key] = measure_tokens_per_s(j.model, c.batch_size, c.seq_len);
    const double secs = o.measure ? double(j.tokens) / speed[key] : NAN;
    total_s += o.measure ? secs : 0;
    fmt::print("{:<28} {:>9} {:>9} {:>7.4f} {:>4} {:>9} {:>8.2f} {:>7} {:>6.2f} {:>8}\n", j.name,
               human_count(double(j.params)), human_count(double(j.active)), j.sparsity, j.experts,
               human_count(double(j.tokens)), double(j.tokens) / double(j.params), j.steps,
               j.epochs, o.measure ? fmt::format("{:.0f}s", secs) : "-");
  }
  fmt::print("{} runs{}\n", jobs.size(),
             o.measure ? fmt::format(", about {:.0f} min on this machine (one step of each model "
                                     "timed; evaluation not counted)",
                                     total_s / 60)
                       : "");
}

// ----------------------------------------------------------------------------
// run: one experiment per job, a lock per job

namespace {

std::string job_dir(const SweepConfig& c, const SweepJob& j) {
  return (fs::path(c.run_dir) / j.name).string();
}

// RUN/<job>/model.json and experiment.toml (written atomically; rewritten identically on every
// start), loaded as `moelab train` would.
Experiment job_experiment(const SweepConfig& c, const SweepJob& j) {
  const fs::path dir = job_dir(c, j);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(fmt::format("{}: cannot create ({})", dir.string(), ec.message()));
  file_write_atomic((dir / "model.json").string(), config_to_json(j.model).dump(2) + "\n");
  toml::table d = c.root;
  d.erase("sweep");
  if (!d.contains("run")) d.insert("run", toml::table{});
  toml::table& run = *d["run"].as_table();
  run.insert_or_assign("dir", dir.string());
  run.insert_or_assign("seed", j.seed);
  d.insert_or_assign("model", toml::table{{"config", (dir / "model.json").string()}});
  d.insert_or_assign("phases", toml::array{toml::table{
                                   {"name", c.subset}, {"subset", c.subset}, {"steps", j.steps}}});
  std::ostringstream os;
  os << fmt::format("# Written by moelab sweep from {}: job {} (budget {:.3g} FLOPs).\n\n",
                    c.source, j.name, j.budget)
     << toml::toml_formatter{d} << "\n";
  const std::string path = (dir / "experiment.toml").string();
  file_write_atomic(path, os.str());
  return experiment_load(path, {});
}

// The --set overrides as words of a shell command line, each in single quotes.
std::string shell_sets(const std::vector<std::string>& overrides) {
  std::string words;
  for (const std::string& kv : overrides) {
    words += " --set '";
    for (const char ch : kv) {
      words += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    }
    words += "'";
  }
  return words;
}

void slurm_write(const SweepConfig& c, const std::vector<SweepJob>& jobs,
                 const std::vector<std::string>& overrides) {
  const std::string path = (fs::path(c.run_dir) / "sweep.slurm").string();
  std::error_code ec;
  fs::create_directories(c.run_dir, ec);
  const int threads = c.root["run"]["threads"].value_or(0);
  file_write_atomic(
      path,
      fmt::format("#!/bin/bash\n"
                  "# Written by moelab study sweep --slurm from {0}: one array task per job.\n"
                  "#SBATCH --job-name=moelab-sweep\n"
                  "#SBATCH --array=0-{1}\n"
                  "#SBATCH --cpus-per-task={2}\n"
                  "#SBATCH --output={3}/slurm_%a.log\n"
                  "srun moelab sweep run {0}{4} --job \"$SLURM_ARRAY_TASK_ID\"\n",
                  c.source, jobs.size() - 1, threads > 0 ? threads : 2, c.run_dir,
                  shell_sets(overrides)));
  std::printf("%s: %zu jobs (sbatch %s)\n", path.c_str(), jobs.size(), path.c_str());
}

// What the grid's runs compute, for RUN/settings.json: the file as read with the base model
// resolved, less the grid's axes (a sweep may grow) and what changes no result.
Settings sweep_settings(const SweepConfig& c) {
  json j = toml_to_json(c.root);
  j["sweep"]["base"] = config_to_json(config_load(c.base));
  return settings_flatten(
      j, {},
      settings_skip({"sweep.budgets", "sweep.sparsities", "sweep.sizes", "sweep.aux_coefs",
                     "sweep.bias_rates", "sweep.seeds", "sweep.max_epochs", "sweep.repeat_seeds",
                     "sweep.repeat_budget", "sweep.extra_sizes", "sweep.extra_budget"}));
}

// --restart: the job folders an earlier sweep wrote in RUN (those whose experiment.toml it
// wrote), their locks, sweep.csv and sweep.slurm go; nothing else there.
void sweep_discard(const SweepConfig& c) {
  const fs::path dir = c.run_dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  int64_t removed = 0;
  std::vector<fs::path> gone;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const fs::path p = e.path();
    if (e.is_directory(ec)) {
      const fs::path x = p / "experiment.toml";
      if (fs::exists(x, ec) && file_read(x.string()).rfind("# Written by moelab sweep", 0) == 0)
        gone.push_back(p), removed++;
    } else if (p.extension() == ".lock") {
      gone.push_back(p);
    }
  }
  for (const fs::path& p : gone) fs::remove_all(p, ec);
  for (const char* f : {"sweep.csv", "sweep.slurm", "settings.json"}) fs::remove(dir / f, ec);
  std::fprintf(stderr, "--restart: %ld job(s) of the earlier sweep in %s discarded\n",
               long(removed), dir.c_str());
}

}  // namespace

int sweep_run(const std::string& config, const SweepRunOptions& o) {
  if (train_collective())
    fail(
        "moelab study sweep runs in one process per job (its grid: workers share the queue (--job, "
        "--slurm)); data-parallel runs: moelab train, moelab study forgetting");
  const SweepConfig c = config_read(config, o.overrides);
  const DataDir data = data_open(data_dir_of(c));
  const std::vector<SweepJob> jobs = plan_build(c, train_sequences(c, data));
  if (o.slurm) return slurm_write(c, jobs, o.overrides), 0;
  if (o.job >= int64_t(jobs.size()))
    fail(fmt::format("--job {}: the plan has {} jobs (0 to {})", o.job, jobs.size(),
                     jobs.size() - 1));
  // A folder holding a sweep started under other settings is refused before anything is
  // written (--restart discards its jobs; with workers running there, stop them first).
  const Settings settings = sweep_settings(c);
  if (o.restart)
    sweep_discard(c);
  else
    settings_check(c.run_dir, settings,
                   "another [run] dir, or --restart to discard the jobs there");
  settings_record(c.run_dir, settings, "moelab study sweep");
  std::error_code ec;
  fs::create_directories(c.run_dir, ec);
  std::vector<QueueRun> queue;
  for (const SweepJob& j : jobs) {
    queue.push_back({j.name, "", [&c, &j] { return job_experiment(c, j); }});
  }
  QueueOptions q;
  q.study = "sweep";
  q.goes_on = "the sweep goes on with its other jobs";
  q.workers = true;
  q.lock_dir = c.run_dir;
  q.page_dir = c.run_dir;
  q.only = o.job;
  const QueueResult done = queue_run(queue, q);
  if (done.status == 130) {
    return 130;
  }
  const std::vector<std::string>& failed = done.failed;
  const int64_t ran = done.ran, busy = done.busy;
  std::fprintf(stderr,
               "== sweep: %ld run here, %ld done before, %ld held by other workers, %zu failed\n",
               long(ran), long(done.done), long(busy), failed.size());
  std::fprintf(stderr, "results: %s\n", sweep_collect(config, o.overrides).c_str());
  if (failed.empty()) return 0;
  return study_failed_end(fmt::format("moelab sweep: {} job(s) failed", failed.size()), failed,
                          "; each has failed.json, sweep.csv leaves them out");
}

// ----------------------------------------------------------------------------
// results

std::string sweep_collect(const std::string& config, const std::vector<std::string>& overrides) {
  const SweepConfig c = config_read(config, overrides);
  const DataDir data = data_open(data_dir_of(c));
  const std::vector<SweepJob> jobs = plan_build(c, train_sequences(c, data));
  std::string csv =
      "job,budget,size,sparsity,experts,top_k,aux_coef,bias_rate,seed,params,active_params,"
      "params_nonembed,active_params_nonembed,tokens,flops,loss,best_loss,steps\n";
  const std::string key = "val:" + c.subset;
  for (const SweepJob& j : jobs) {
    const std::string dir = job_dir(c, j);
    std::error_code ec;
    if (!fs::exists(fs::path(dir) / "metrics.jsonl", ec) || study_last_step(dir) != j.steps)
      continue;
    const RunData r = run_read(dir);
    const auto it = r.s.find(key);
    if (it == r.s.end() || it->second.empty()) continue;
    double best = INFINITY;
    for (const auto& [step, v] : it->second) best = std::min(best, v);
    csv += fmt::format(
        "{},{:.6g},{},{:g},{},{},{:g},{:g},{},{},{},{},{},{},{:.6g},{:.6f},{:.6f},{}\n", j.name,
        j.budget, j.size, j.sparsity, j.experts, j.top_k, j.aux_coef, j.bias_rate, j.seed, j.params,
        j.active, j.params_nonembed, j.active_nonembed, j.tokens,
        j.flops_per_token * double(j.tokens), run_last(r, key), best, j.steps);
  }
  const std::string path = (fs::path(c.run_dir) / "sweep.csv").string();
  file_write_atomic(path, csv);
  study_page_after_report(c.run_dir, "");
  return path;
}

}  // namespace moelab
