#include "train/trainer.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/gemm.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "core/signals.hpp"
#include "core/sysinfo.hpp"
#include "train/checkpoint.hpp"
#include "train/collective.hpp"
#include "train/data_parallel.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

std::string eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = int64_t(seconds);
  return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
}

// Keeps the metrics lines of steps <= step (a resumed run rewrites what came after).
void metrics_truncate(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("step", int64_t(0)) <= step) kept += line + "\n";
  }
  in.close();
  file_write_atomic(path, kept);
}

// Tensor names for a message: the layers' tensors of one kind in one entry, with their layer
// numbers (model.layers.{0-3,5}.mlp.router.weight), in the order they first come.
std::string names_brief(const std::vector<std::string>& names) {
  static const std::regex layer(R"(^model\.layers\.(\d+)\.(.+)$)");
  std::vector<std::pair<std::string, std::vector<int64_t>>> groups;  // suffix -> layers
  std::vector<std::string> out;
  for (const std::string& n : names) {
    std::smatch m;
    if (!std::regex_match(n, m, layer)) {
      out.push_back(n);
      continue;
    }
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == m[2].str(); });
    if (it == groups.end()) {
      out.push_back("");  // filled below, in this place
      groups.push_back({m[2].str(), {}});
      it = groups.end() - 1;
    }
    it->second.push_back(std::stoll(m[1]));
  }
  size_t g = 0;
  for (std::string& o : out) {
    if (!o.empty()) continue;
    const auto& [suffix, layers] = groups[g++];
    std::string ranges;
    for (size_t i = 0; i < layers.size();) {
      size_t j = i;
      while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) j++;
      ranges += fmt::format(
          "{}{}", ranges.empty() ? "" : ",",
          j == i ? fmt::format("{}", layers[i]) : fmt::format("{}-{}", layers[i], layers[j]));
      i = j + 1;
    }
    o = layers.size() == 1 ? fmt::format("model.layers.{}.{}", ranges, suffix)
                           : fmt::format("model.layers.{{{}}}.{}", ranges, suffix);
  }
  std::string s;
  for (const std::string& o : out) s += (s.empty() ? "" : ", ") + o;
  return s;
}

// [train] freeze on the model's layout, before the optimizer lays out its moments (it keeps
// them for trainable tensors only). Returns the layout for the optimizer.
const ParamLayout& layout_freeze(Model<float>& model, const Experiment& x) {
  for (const std::string& p : x.freeze)
    if (model.layout.set_frozen(p, true) == 0)
      fail(
          fmt::format("{}: 'train.freeze' pattern '{}' matches no tensor of the model (names as "
                      "in Hugging Face GptOss, e.g. model.layers.0.mlp.router.weight)",
                      x.source, p));
  return model.layout;
}

// ----------------------------------------------------------------------------
// the run directory

// The checkpoint a start continues from ("" for step 0), and whether a run stopped there before
// its first checkpoint: it held nothing worth keeping and starts again, by a plain start or by
// --resume, instead of being refused both ways.
struct RunClaim {
  std::string ckpt;
  bool stale = false;
};

RunClaim run_dir_claim(const Experiment& x, bool resume) {
  const auto existing = checkpoint_list(x.run_dir);
  const fs::path dir = x.run_dir;
  if (!existing.empty()) {
    if (!resume)
      fail(fmt::format("{}: already holds a run; use --resume, or choose another run.dir",
                       x.run_dir));
    return {existing.back(), false};
  }
  std::error_code ec;
  if (fs::exists(dir / "metrics.jsonl", ec) || fs::exists(dir / "run.json", ec)) return {"", true};
  if (resume) fail(fmt::format("{}: no checkpoint to resume from", x.run_dir));
  return {"", false};
}

void run_dir_restart(const Experiment& x) {
  std::fprintf(stderr, "%s: the run there stopped before its first checkpoint; starting again\n",
               x.run_dir.c_str());
  std::error_code ec;
  for (const char* f : {"metrics.jsonl", "evalset.frozen.jsonl", "run.json"})
    fs::remove(fs::path(x.run_dir) / f, ec);
}

// run.json: what a report needs to know about this run without re-reading the TOML.
void run_info_write(const Experiment& x, const FlopCounts& flops) {
  const ParamCounts pc = config_count(x.model);
  ojson phases = ojson::array();
  int64_t at = 0;
  for (const PhaseConfig& p : x.phases) {
    phases.push_back({{"name", p.name},
                      {"subset", p.subset},
                      {"start_step", at},
                      {"end_step", at + x.phase_steps(p)}});
    at += x.phase_steps(p);
  }
  ojson run = {{"experiment", x.source},
               {"seed", x.seed},
               {"experts", x.model.num_local_experts},
               {"top_k", x.model.num_experts_per_tok},
               {"params_total", pc.total},
               {"params_active", pc.active},
               {"train_flops_per_token", flops.train_per_token},
               {"seq_len", x.seq_len},
               {"tokens_per_step", x.tokens_per_step()},
               {"total_steps", x.total_steps()},
               {"filter_after", x.evalset.empty() ? "" : x.filter_after},
               {"filter_at", x.evalset.empty() ? "" : x.filter_at},
               {"min_recalled", x.min_recalled},
               {"phases", phases},
               {"model", config_to_json(x.model)}};
  if (!x.init_from.empty()) run["init_from"] = x.init_from;
  if (!x.freeze.empty()) run["freeze"] = x.freeze;
  file_write_atomic((fs::path(x.run_dir) / "run.json").string(), run.dump(2) + "\n");
}

int64_t count_nonfinite(std::span<const float> v) {
  int64_t n = 0;
  for (float f : v) n += !std::isfinite(f);
  return n;
}

}  // namespace

// ----------------------------------------------------------------------------
// setup and resume

Trainer::Trainer(const Experiment& x)
    : x_(x),
      model_(x.model, x.batch_size, x.seq_len),
      opt_(layout_freeze(model_, x_), x.optimizer),
      flops_(config_flops(x.model, x.seq_len)),
      metrics_path_((fs::path(x.run_dir) / "metrics.jsonl").string()),
      frozen_path_((fs::path(x.run_dir) / "evalset.frozen.jsonl").string()),
      tty_(::isatty(2)),
      comm_(train_collective()) {
  model_.init_weights(x.seed);
  if (comm_) data_parallel_setup();
}

// Data parallel (train/data_parallel.hpp): rank r of P takes the micro-batches m with
// m % P == r of every step, so that the P ranks together take one process's global batch.
void Trainer::data_parallel_setup() {
  const int64_t P = comm_->size();
  if (x_.grad_accum % P != 0)
    fail(
        fmt::format("{}: 'train.grad_accum' ({}) must be a multiple of the number of processes "
                    "({}): each takes grad_accum / {} micro-batches of every step",
                    x_.source, x_.grad_accum, P, P));
  for (size_t i = 0; i < x_.phases.size(); i++)
    if (x_.phases[i].focused())
      fail(fmt::format("{}: 'phases[{}]': focused replay runs in one process only (not {})",
                       x_.source, i, P));
  sync_ = std::make_unique<GradSync>(model_.layout, std::span<float>(model_.grads),
                                     x_.model.num_hidden_layers, *comm_);
  const char* overlap = std::getenv("MOELAB_DIST_OVERLAP");
  sync_->overlap = !(overlap && std::string(overlap) == "0");
}

void Trainer::start(bool resume) {
  data_.emplace(data_open(x_.data_dir));
  if (x_.model.vocab_size < data_->vocab_size)
    fail(fmt::format("{}: model vocab_size {} is smaller than the data's tokenizer ({})", x_.source,
                     x_.model.vocab_size, data_->vocab_size));
  // One training loader per subset used (phases and replay), one validation loader per subset.
  for (const PhaseConfig& p : x_.phases)
    for (const std::string& s : {p.subset, p.replay_subset})
      if (!s.empty() && !train_.contains(s)) {
        train_.emplace(s, DataLoader(*data_, s, "train", x_.seq_len, rng_mix(x_.seed ^ fnv1a(s))));
        if (x_.eval_every > 0) val_.emplace(s, DataLoader(*data_, s, "val", x_.seq_len, 0));
      }
  for (const auto& [name, _] : train_) sources_.push_back(name);
  replay_setup();
  peak_ = x_.peak_gflops > 0 ? x_.peak_gflops : bench_fma_peak_gflops(threads_get(), 0.3);

  // Everything the run reads is checked before the run directory is touched.
  if (!x_.evalset.empty()) {
    full_set_ = evalset_load(x_.evalset, data_->fingerprint, evalset_limits());
    // Nothing in it can be recalled: a run that needs some would stop at the filtering, maybe
    // hours from now; it stops here instead.
    if (full_set_.samples.empty() && x_.min_recalled > 0)
      fail(fmt::format(
          "{}: the evaluation set has no samples, fewer than eval.min_recalled = {} can be "
          "recalled, so forgetting cannot be measured; stopped before training. Build one with "
          "samples (eval.min_recalled = 0 trains without forgetting metrics)",
          x_.evalset, x_.min_recalled));
  }
  const RunClaim claim = run_dir_claim(x_, resume);
  if (comm_) {  // before anything is written: every rank runs the same
    comm_->same("the experiment (its file after --set, and the model)",
                fnv1a(x_.text + config_to_json(x_.model).dump()));
    comm_->same("the data's tokenizer", data_->fingerprint);
    comm_->same("the checkpoint it starts from", fnv1a(claim.ckpt));
  }
  std::error_code ec;
  // The base model's recalled set (filter_at = "start") is the run's from its start on.
  if (!claim.ckpt.empty() && !x_.evalset.empty() && x_.filter_at == "start" &&
      !fs::exists(frozen_path_, ec))
    fail(fmt::format(
        "{}: missing; the set the base model recalled before step 1 cannot be rebuilt for {} "
        "(start the run again in a new run.dir)",
        frozen_path_, claim.ckpt));
  if (!claim.ckpt.empty())
    resume_from(claim.ckpt);
  else if (!x_.init_from.empty())
    init_from();
  if (!x_.freeze.empty()) {
    std::vector<std::string> frozen;
    int64_t n = 0;
    for (const TensorView& t : model_.layout.tensors)
      if (t.frozen) frozen.push_back(t.name), n += t.numel;
    std::fprintf(stderr, "frozen: %zu tensors, %ld of %ld parameters: %s\n", frozen.size(), long(n),
                 long(model_.layout.total), names_brief(frozen).c_str());
  }
  t_start_ = t_window_ = time_now_s();  // the speed counts this session's steps only
  if (!train_writer()) return;          // rank 0 writes the run's files
  if (claim.stale) run_dir_restart(x_);
  fs::create_directories(x_.run_dir, ec);
  if (ec) fail(fmt::format("{}: cannot create the run directory ({})", x_.run_dir, ec.message()));
  run_info_write(x_, flops_);
  metrics_.open(metrics_path_, std::ios::app);
  if (!metrics_) fail(fmt::format("{}: cannot write", metrics_path_));
  forgetting_setup();
}

void Trainer::resume_from(const std::string& ckpt) {
  const json state = checkpoint_load(ckpt, model_, &opt_);
  checkpoint_check_tokenizer(ckpt, state, data_->fingerprint, x_.data_dir);
  try {
    step_ = state.at("step").get<int64_t>();
    for (auto& [name, pos] : state.at("loaders").items())
      if (train_.contains(name))
        train_.at(name).seek({pos.at("epoch").get<uint64_t>(), pos.at("index").get<uint64_t>()});
  } catch (const json::exception&) {
    fail(fmt::format("{}/trainer_state.json: 'step' or 'loaders' is missing or mistyped", ckpt));
  }
  replay_restore(state, ckpt);
  start_step_ = step_;
  if (train_writer()) metrics_truncate(metrics_path_, step_);
  std::fprintf(stderr, "resumed from %s (step %ld)\n", ckpt.c_str(), long(step_));
}

// [model] init_from: another run's weights, on a fresh start only (a resumed run has its own).
void Trainer::init_from() {
  const std::string& dir = x_.init_from;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(fmt::format("{}: 'model.init_from': {}: no such checkpoint folder", x_.source, dir));
  const InitReport r = checkpoint_init_from(dir, model_);
  // Token ids of another tokenizer would mean nothing here.
  const fs::path state_path = fs::path(dir) / "trainer_state.json";
  if (fs::exists(state_path, ec)) {
    const json state = json::parse(file_read(state_path.string()), nullptr, false);
    if (!state.is_object())
      fail(fmt::format("{}: not a trainer state (invalid JSON)", state_path.string()));
    checkpoint_check_tokenizer(dir, state, data_->fingerprint, x_.data_dir);
  }
  std::fprintf(stderr, "init_from %s: %zu tensors loaded", dir.c_str(), r.loaded.size());
  if (r.fresh.empty())
    std::fprintf(stderr, ", none new\n");
  else
    std::fprintf(stderr, "; %zu new (initialized from run.seed): %s\n", r.fresh.size(),
                 names_brief(r.fresh).c_str());
}

void Trainer::forgetting_setup() {
  if (x_.evalset.empty()) return;
  if (x_.filter_at == "start") return forgetting_at_start();
  int64_t filter_end = 0;
  for (const PhaseConfig& p : x_.phases) {
    filter_end += x_.phase_steps(p);
    if (p.name == x_.filter_after) break;
  }
  // The frozen set belongs to the checkpoint only if that comes after the filtering; one written
  // just before a crash is rebuilt at the same step, so the metrics equal an unbroken run's.
  std::error_code ec;
  if (!fs::exists(frozen_path_, ec)) return;
  if (step_ >= filter_end) {
    frozen_ = evalset_load(frozen_path_, data_->fingerprint, evalset_limits());
    have_frozen_ = true;
    too_few_ = recalled_shortfall();
    recalled_check();  // a resumed run that could not measure forgetting stops again
  } else {
    fs::remove(frozen_path_, ec);
  }
}

// filter_at = "start" (methods.md §5.5): the set the init_from model recalls, filtered before
// step 1 and logged as step 0; a resumed run keeps the one of its start.
void Trainer::forgetting_at_start() {
  if (step_ > 0) {  // start() made sure that it is there
    frozen_ = evalset_load(frozen_path_, data_->fingerprint, evalset_limits());
    have_frozen_ = true;
  } else {
    ojson forgetting;
    forgetting["evalset"] = forgetting_filter();
    if (!frozen_.samples.empty())
      forgetting["metrics"] = evalreport_json(
          moelab::evaluate(model_, *data_->tokenizer, frozen_, x_.forgetting_batch));
    const ojson m = {
        {"step", 0}, {"phase", x_.phases.front().name}, {"tokens", 0}, {"forgetting", forgetting}};
    metrics_ << m.dump() << "\n" << std::flush;
    if (!metrics_) fail(fmt::format("{}: write failed (disk full?)", metrics_path_));
  }
  too_few_ = recalled_shortfall();
  recalled_check();
}

// Keeps the samples this model recalls (M_ex = 1), frozen for the rest of the run. Returns the
// counts for the metrics line.
ojson Trainer::forgetting_filter() {
  const Activity doing("evaluation");
  // An empty set keeps nothing (eval.min_recalled = 0 let the run go on without one).
  frozen_ =
      full_set_.samples.empty()
          ? full_set_
          : evalset_filter(
                full_set_,
                moelab::evaluate(model_, *data_->tokenizer, full_set_, x_.forgetting_batch).ex_hit);
  evalset_write(frozen_path_, frozen_);
  have_frozen_ = true;
  return {{"samples", full_set_.samples.size()}, {"kept", frozen_.samples.size()}};
}

// The one line that stops a run whose frozen set is too small to measure forgetting on, or "".
std::string Trainer::recalled_shortfall() const {
  const int64_t kept = int64_t(frozen_.samples.size());
  if (kept >= x_.min_recalled) return "";
  const std::string counts = fmt::format(
      "recalls {} of the {} evaluation samples (M_ex = 1), fewer than eval.min_recalled = {}, so "
      "forgetting cannot be measured",
      kept, full_set_.samples.size(), x_.min_recalled);
  if (x_.filter_at == "start")
    return fmt::format(
        "{}: before step 1 the base model (model.init_from = {}) {}; stopped before training. Use "
        "a base trained longer on its data, a larger one, or entities that recur more often in "
        "that data (eval.min_recalled = 0 goes on anyway)",
        x_.source, x_.init_from, counts);
  return fmt::format(
      "{}: after phase {} the model {}; stopped. Train {} for more epochs, use a larger model, or "
      "choose entities that recur more often in {} (eval.min_recalled = 0 goes on anyway)",
      x_.source, x_.filter_after, counts, x_.filter_after, x_.filter_after);
}

void Trainer::recalled_check() const {
  if (too_few_.empty()) return;
  const auto list = checkpoint_list(x_.run_dir);
  if (list.empty() || x_.filter_at == "start") fail(too_few_);
  fail(fmt::format("{}; the checkpoint {} is kept", too_few_, list.back()));
}

EvalSetLimits Trainer::evalset_limits() const {
  return {data_->vocab_size, x_.model.vocab_size, x_.model.max_position_embeddings};
}

// ----------------------------------------------------------------------------
// a step

Trainer::PhaseAt Trainer::phase_at(int64_t step) const {
  size_t pi = 0;
  int64_t end = 0;
  for (; pi < x_.phases.size(); pi++) {
    end += x_.phase_steps(x_.phases[pi]);
    if (step < end) break;
  }
  return {pi, end};
}

StepStats Trainer::step(const BatchSource& next, double lr) {
  StepStats r = train_batch(next, lr, true);
  if (!x_.model.is_moe() || x_.model.num_local_experts == 1) return r;
  r.expert_load = model_.expert_load();
  if (comm_) {  // the step's last micro-batch is rank P-1's: its loads, as one process logs them
    if (comm_->rank() != comm_->size() - 1)
      for (auto& l : r.expert_load) std::fill(l.begin(), l.end(), 0.0);
    collective_sum(*comm_, r.expert_load);
  }
  return r;
}

namespace {

// Sums a micro-batch's raw router losses into one entry per routed layer (those with counts).
void router_stats_add(std::vector<RouterStats>& router, const Losses& l,
                      const std::vector<std::vector<int64_t>>& counts) {
  size_t i = 0;
  for (size_t layer = 0; layer < counts.size(); layer++) {
    if (counts[layer].empty()) continue;
    if (i == router.size()) router.push_back({.layer = int64_t(layer)});
    router[i].aux += l.layers[layer].aux_raw, router[i++].z += l.layers[layer].z_raw;
  }
}

// The micro-batches' means, and each routed layer's largest load of the step relative to the
// fair share 1/E.
void router_stats_finish(std::vector<RouterStats>& router,
                         const std::vector<std::vector<int64_t>>& counts, double accum) {
  size_t i = 0;
  for (const std::vector<int64_t>& c : counts) {
    if (c.empty()) continue;
    RouterStats& s = router[i++];
    s.aux /= accum, s.z /= accum;
    int64_t total = 0, most = 0;
    for (int64_t n : c) total += n, most = std::max(most, n);
    s.max_load = total > 0 ? double(most) * double(c.size()) / double(total) : 0.0;
  }
}

}  // namespace

// The step's sums over the ranks: the gradients (started during the backward pass), then the
// losses, the routers' sums and the routing counts, so that every rank holds what one process
// would have (to float rounding: the sums' order differs).
void Trainer::reduce_step(StepStats& r) {
  if (!comm_) return;
  comm_wait_s_ += sync_->finish();
  comm_steps_++;
  std::vector<double> v = {r.lm, r.aux, r.z};
  for (const RouterStats& s : r.router) v.push_back(s.aux), v.push_back(s.z);
  comm_->sum(v);
  r.lm = v[0], r.aux = v[1], r.z = v[2];
  for (size_t i = 0; i < r.router.size(); i++)
    r.router[i].aux = v[3 + 2 * i], r.router[i].z = v[4 + 2 * i];
  collective_sum(*comm_, model_.route_counts());
}

// Whether to stop and whether to save, agreed by every rank (a signal may reach them at
// different steps): any rank's request counts for all.
std::pair<bool, bool> Trainer::agree(bool stop, bool save) const {
  if (!comm_) return {stop, save};
  std::vector<int64_t> f = {stop, save};
  comm_->sum(f);
  return {f[0] > 0, f[1] > 0};
}

// One optimizer update; counted: a step of the run (a replay update is not one).
StepStats Trainer::train_batch(const BatchSource& next, double lr, bool counted) {
  StepStats r;
  r.lr = lr;
  const double accum = double(x_.grad_accum);
  {
    // Gradients are summed over the micro-batches; the losses and the norm are their means.
    const Activity doing("a training step");
    model_.zero_grad();
    // this rank's last micro-batch: its backward starts the gradient sums layer by layer
    const int64_t last = comm_ ? x_.grad_accum - comm_->size() + comm_->rank() : -1;
    for (int64_t micro = 0; micro < x_.grad_accum; micro++) {
      const MicroBatch b = next(micro);
      if (b.tokens.empty()) continue;  // another rank's
      const Losses l = model_.forward(b.tokens, b.targets);
      r.lm += l.lm / accum;
      r.aux += l.aux / accum;
      r.z += l.z / accum;
      router_stats_add(r.router, l, model_.route_counts());
      if (micro == last) model_.on_grads_ready = [this](int64_t layer) { sync_->ready(layer); };
      model_.backward();
      model_.on_grads_ready = nullptr;
    }
    reduce_step(r);
    router_stats_finish(r.router, model_.route_counts(), accum);
  }
  {
    const ProfileScope prof(model_.device().profile, "optimizer");
    r.grad_norm = grad_global_norm<float>(model_.layout, model_.grads) / accum;
    if (counted) step_++, window_steps_++;
    r.step = step_;
    r.applied = std::isfinite(r.total()) && std::isfinite(r.grad_norm);
    if (r.applied) {
      skipped_in_a_row_ = 0;
      opt_.update(model_.params, model_.grads, lr, grad_clip_scale(r.grad_norm, x_.clip) / accum);
      // the step's loads move the balance bias (methods.md §3.7.1)
      if (x_.model.router_balance.on()) model_.balance_update();
    } else {
      on_nonfinite(r);
    }
  }
  return r;
}

StepStats Trainer::step() {
  const PhaseAt at = phase_at(step_);
  const PhaseConfig& phase = x_.phases[at.index];
  // A micro-batch comes from the replay subset with probability replay_ratio, decided by the
  // seed, the step and the micro-batch alone (a resumed run decides the same).
  const int64_t at_step = step_;
  const BatchSource next = [&](int64_t micro) {
    const bool replay = phase.replay_ratio > 0 && rng_uniform(x_.seed, 7000 + uint64_t(at_step),
                                                              uint64_t(micro)) < phase.replay_ratio;
    const std::string& subset = replay ? phase.replay_subset : phase.subset;
    if (comm_ && micro % comm_->size() != comm_->rank()) {  // another rank reads it
      ids_.clear();
      train_.at(subset).skip(x_.batch_size, ids_);
      replay_offer(at.index, subset, ids_);
      return MicroBatch{};
    }
    train_.at(subset).next(x_.batch_size, tok_, tgt_, &ids_);
    replay_offer(at.index, subset, ids_);
    return MicroBatch{tok_, tgt_};
  };
  StepStats r = step(next, x_.schedule.lr(step_));
  r.phase = at.index;
  phase_name_ = phase.name;
  // Focused replay after every replay_every steps of the phase, at the step's learning rate.
  const int64_t in_phase = r.step - (at.end - x_.phase_steps(phase));
  if (phase.focused() && in_phase % phase.replay_every == 0) replay_run(at.index, r, r.lr);
  return r;
}

// ----------------------------------------------------------------------------
// focused replay (methods.md §5.4)

void Trainer::replay_setup() {
  const int64_t batch = x_.batch_size * x_.grad_accum;
  for (size_t i = 0; i < x_.phases.size(); i++) {
    const PhaseConfig& p = x_.phases[i];
    if (!p.focused()) continue;
    // Memory of another subset: it must hold one batch of distinct sequences.
    if (!p.replay_subset.empty() && train_.at(p.replay_subset).sequences() < uint64_t(batch))
      fail(fmt::format(
          "{}: 'phases[{}].replay_subset' {} has {} training sequences, fewer than one replay "
          "batch ({} = train.batch_size x train.grad_accum)",
          x_.source, i, p.replay_subset, train_.at(p.replay_subset).sequences(), batch));
    replay_.push_back({i, ReplayMemory(uint64_t(p.replay_memory), uint32_t(p.replay_exit),
                                       rng_mix(x_.seed ^ fnv1a("replay:" + p.name)))});
  }
}

// The sequences of a regular micro-batch of phase `phase`: every memory that keeps what the run
// trained on takes them, up to the end of its own phase.
void Trainer::replay_offer(size_t phase, const std::string& subset, std::span<const uint64_t> ids) {
  if (replay_.empty()) return;
  const uint32_t source =
      uint32_t(std::find(sources_.begin(), sources_.end(), subset) - sources_.begin());
  for (PhaseReplay& pr : replay_)
    if (x_.phases[pr.phase].replay_subset.empty() && phase <= pr.phase)
      for (uint64_t id : ids) pr.memory.offer(source, id);
}

// One replay: a batch of distinct samples drawn from the phase's memory (refilled first from
// replay_subset when it names one), trained replay_repeat times.
void Trainer::replay_run(size_t phase, StepStats& r, double lr) {
  const PhaseConfig& p = x_.phases[phase];
  ReplayMemory& mem = std::find_if(replay_.begin(), replay_.end(), [&](auto& pr) {
                        return pr.phase == phase;
                      })->memory;
  const uint64_t n = uint64_t(x_.batch_size * x_.grad_accum);
  if (!p.replay_subset.empty()) {
    DataLoader& from = train_.at(p.replay_subset);
    const uint32_t source =
        uint32_t(std::find(sources_.begin(), sources_.end(), p.replay_subset) - sources_.begin());
    // Up to capacity, or every sequence of the subset: one pass over its order finds them all.
    const uint64_t room = std::min(mem.capacity(), from.sequences());
    for (uint64_t tries = 0; mem.size() < room && tries < from.sequences(); tries++) {
      ids_.clear();
      from.skip(1, ids_);
      mem.offer(source, ids_[0]);
    }
  }
  r.replayed = true;
  if (mem.size() >= n) {
    const std::vector<ReplaySample> batch = mem.draw(n);
    const size_t len = size_t(x_.seq_len);
    replay_tok_.resize(n * len);
    replay_tgt_.resize(n * len);
    for (size_t i = 0; i < batch.size(); i++)
      train_.at(sources_[batch[i].source])
          .read_sequence(batch[i].sequence, &replay_tok_[i * len], &replay_tgt_[i * len]);
    const size_t micro_len = size_t(x_.batch_size) * len;
    const BatchSource next = [&](int64_t micro) {
      const size_t at = size_t(micro) * micro_len;
      return MicroBatch{std::span<const int32_t>(replay_tok_).subspan(at, micro_len),
                        std::span<const int32_t>(replay_tgt_).subspan(at, micro_len)};
    };
    for (int64_t k = 0; k < p.replay_repeat; k++)
      r.replay_lm.push_back(train_batch(next, lr, false).lm);
  }
  r.replay_memory = mem.size();
}

json Trainer::replay_state() const {
  json out = json::object();
  for (const PhaseReplay& pr : replay_) out[x_.phases[pr.phase].name] = pr.memory.to_json(sources_);
  return out;
}

void Trainer::replay_restore(const json& state, const std::string& ckpt) {
  for (PhaseReplay& pr : replay_) {
    const std::string& name = x_.phases[pr.phase].name;
    const std::string where =
        fmt::format("{}/trainer_state.json: the replay memory of phase {}", ckpt, name);
    if (!state.contains("replay") || !state["replay"].is_object() ||
        !state["replay"].contains(name))
      fail(fmt::format("{} is missing (was the run started without replay = \"focused\" there?)",
                       where));
    pr.memory.from_json(state["replay"][name], sources_, where);
  }
}

std::string Trainer::last_good() const {
  const auto list = checkpoint_list(x_.run_dir);
  return list.empty() ? std::string("no checkpoint was written yet")
                      : fmt::format("the last good checkpoint is {}", list.back());
}

// A non-finite loss or gradient is never applied: the run stops, or skips the batch until too
// many in a row were skipped.
void Trainer::on_nonfinite(const StepStats& r) {
  const std::string what = std::isfinite(r.total())
                               ? fmt::format("the gradient norm is not finite ({})", r.grad_norm)
                               : fmt::format("the loss is not finite ({})", r.total());
  if (!x_.skip_nonfinite)
    throw TrainStopped(
        fmt::format("step {}: {}; stopped before the update, {} (train.skip_nonfinite = true "
                    "skips such batches; a lower schedule.max_lr may help)",
                    step_, what, last_good()),
        step_, true);
  if (++skipped_in_a_row_ > x_.max_skips)
    throw TrainStopped(
        fmt::format("step {}: {} batches in a row were skipped ({}); stopped, {} (see "
                    "train.max_skips)",
                    step_, skipped_in_a_row_, what, last_good()),
        step_, true);
}

// ----------------------------------------------------------------------------
// evaluation

StepEval Trainer::evaluate(const StepStats& r) {
  StepEval e;
  if (!train_writer()) return e;  // rank 0 evaluates and logs; the others wait at the next sum
  const PhaseConfig& phase = x_.phases[r.phase];
  const bool phase_done = r.step == phase_at(r.step - 1).end;
  e.forgetting = forgetting_duties(phase, phase_done);
  // Validation runs on the steps whose losses are logged.
  if (r.applied && log_due(r, e) && x_.eval_every > 0 &&
      (r.step % x_.eval_every == 0 || phase_done))
    e.val_loss = validation_losses();
  return e;
}

ojson Trainer::forgetting_duties(const PhaseConfig& phase, bool phase_done) {
  ojson forgetting;
  if (x_.evalset.empty()) return forgetting;
  const Activity doing("evaluation");
  if (x_.filter_at == "phase_end" && phase_done && phase.name == x_.filter_after && !have_frozen_) {
    // Keep the samples this model recalls (M_ex = 1); the same ones for the rest of the run.
    forgetting["evalset"] = forgetting_filter();
    too_few_ = recalled_shortfall();  // the run stops after this step's checkpoint
  }
  const bool due = have_frozen_ && !frozen_.samples.empty() &&
                   ((x_.forgetting_every > 0 && step_ % x_.forgetting_every == 0) ||
                    forgetting.contains("evalset") || phase_done);
  if (due)
    forgetting["metrics"] =
        evalreport_json(moelab::evaluate(model_, *data_->tokenizer, frozen_, x_.forgetting_batch));
  return forgetting;
}

// Mean loss on the same held-out batches of every subset.
ojson Trainer::validation_losses() {
  const Activity doing("validation");
  ojson v = ojson::object();
  for (auto& [name, loader] : val_) {
    loader.seek({0, 0});
    double sum = 0;
    const int64_t n = std::min<int64_t>(x_.eval_batches,
                                        int64_t(loader.sequences() / uint64_t(x_.batch_size)) + 1);
    for (int64_t b = 0; b < n; b++) {
      loader.next(x_.batch_size, tok_, tgt_);
      sum += model_.forward(tok_, tgt_).lm;
    }
    v[name] = sum / double(n);
  }
  return v;
}

// ----------------------------------------------------------------------------
// logging and checkpoints

bool Trainer::log_due(const StepStats& r, const StepEval& e) const {
  const bool phase_done = r.step == phase_at(r.step - 1).end;
  return r.step % x_.log_every == 0 || phase_done || r.step == x_.total_steps() ||
         !e.forgetting.is_null() || r.replayed;
}

void Trainer::log(const StepStats& r, const StepEval& e) {
  if (!train_writer()) return;
  const PhaseConfig& phase = x_.phases[r.phase];
  ojson m = {{"step", r.step}, {"phase", phase.name}, {"tokens", r.step * x_.tokens_per_step()}};
  const bool due = log_due(r, e);
  if (!r.applied)
    m["skipped"] = std::isfinite(r.total()) ? "non-finite gradient" : "non-finite loss";
  else if (due) {
    m["loss"] = r.lm;
    m["lr"] = r.lr;
    m["grad_norm"] = r.grad_norm;
    if (!r.expert_load.empty()) {
      m["aux_loss"] = r.aux;
      m["z_loss"] = r.z;
      m["expert_load"] = r.expert_load;
      ojson router = ojson::array();
      for (const RouterStats& s : r.router)
        router.push_back(
            {{"layer", s.layer}, {"aux", s.aux}, {"z", s.z}, {"max_load", s.max_load}});
      m["router"] = router;
    }
    if (!e.val_loss.is_null()) m["val_loss"] = e.val_loss;
    log_progress(m, r);
  }
  if (r.replayed) m["replay"] = {{"loss", r.replay_lm}, {"memory", r.replay_memory}};
  if (!e.forgetting.is_null()) m["forgetting"] = e.forgetting;
  if (!r.applied || due) metrics_ << m.dump() << "\n" << std::flush;
  if (!metrics_) fail(fmt::format("{}: write failed (disk full?)", metrics_path_));
}

// Throughput over the steps since the last logged one, and the progress line.
void Trainer::log_progress(ojson& m, const StepStats& r) {
  const double now = time_now_s(), dt = now - t_window_;
  const double tok_s = double(window_steps_ * x_.tokens_per_step()) / std::max(dt, 1e-9);
  t_window_ = now, window_steps_ = 0;
  m["tokens_per_s"] = std::round(tok_s * 10) / 10;
  // tok_s counts every rank's tokens: against every rank's peak (each measured its own)
  const double peak = peak_ * double(comm_ ? comm_->size() : 1);
  m["mfu"] = std::round(tok_s * flops_.train_per_token / 1e9 / peak * 1e4) / 1e4;
  if (comm_ && comm_steps_ > 0) {  // rank 0's view: its own wait for the gradient sums
    m["ranks"] = comm_->size();
    m["comm_wait_s"] = comm_wait_s_ / double(comm_steps_);
    m["step_s"] = dt / double(comm_steps_);
    comm_wait_s_ = 0, comm_steps_ = 0;
  }
  const int64_t total = x_.total_steps();
  const double rate = double(step_ - start_step_) / std::max(now - t_start_, 1e-9);
  std::fprintf(stderr, "%sstep %ld/%ld | %s | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s",
               tty_ ? "\r" : "", long(step_), long(total), x_.phases[r.phase].name.c_str(), r.lm,
               r.lr, tok_s, eta(double(total - step_) / rate).c_str(), tty_ ? "   " : "\n");
}

void Trainer::progress_end() const {
  if (tty_) std::fprintf(stderr, "\n");
}

bool Trainer::checkpoint_due(const StepStats& r) const {
  return r.step == phase_at(r.step - 1).end ||
         (x_.checkpoint_every > 0 && r.step % x_.checkpoint_every == 0);
}

void Trainer::save() {
  // A checkpoint is only ever a good one: non-finite weights stop the run instead.
  const int64_t bad = count_nonfinite(model_.params);
  if (bad > 0)
    throw TrainStopped(fmt::format("step {}: {} parameters are not finite; stopped without "
                                   "saving, {}",
                                   step_, bad, last_good()),
                       step_, true);
  if (!train_writer()) {  // rank 0 writes; every rank's loaders and weights are the same
    saved_step_ = step_;
    return;
  }
  json loaders = json::object();
  for (auto& [name, l] : train_)
    loaders[name] = {{"epoch", l.position().epoch}, {"index", l.position().index}};
  json state = {{"phase", phase_name_},
                {"loaders", loaders},
                {"seed", x_.seed},
                {"tokenizer_fingerprint", data_->fingerprint}};
  if (!replay_.empty()) state["replay"] = replay_state();
  const Activity doing("checkpoint writing");
  const std::string dir = checkpoint_save(x_.run_dir, step_, model_, opt_, state, x_.keep_last);
  saved_step_ = step_;
  std::fprintf(stderr, "%scheckpoint %s\n", tty_ ? "\n" : "", dir.c_str());
}

// ----------------------------------------------------------------------------
// a run

TrainStopped::TrainStopped(const std::string& msg, int64_t step_, bool nonfinite_)
    : Error(one_line(msg)), step(step_), nonfinite(nonfinite_) {}

namespace {
int train_loop(const Experiment& x, bool resume, int64_t& steps);
}  // namespace

int train_run(const Experiment& x, bool resume) {
  int64_t steps = -1;  // taken so far, for the error's record (-1: before the run started)
  try {
    return train_loop(x, resume, steps);
  } catch (const TrainStopped&) {
    throw;
  } catch (const std::exception& e) {
    throw TrainStopped(e.what(), steps, false);
  }
}

namespace {

int train_loop(const Experiment& x, bool resume, int64_t& steps) {
  const StopScope stop;  // from here on a signal asks for a checkpoint and a clean stop
  threads_set(x.threads > 0 ? x.threads : omp_get_num_procs());
  Trainer t(x);
  t.start(resume);
  steps = t.steps_done();
  const Activity doing("training");  // between the parts named in detail
  bool stopping = t.agree(signals_stop_requested() != 0, false).first;
  while (!t.finished() && !stopping) {
    const StepStats r = t.step();
    steps = t.steps_done();
    t.log(r, t.evaluate(r));
    // SIGUSR1 and stop signals, agreed by every rank of a data-parallel run
    const auto [stop_now, asked] =
        t.agree(signals_stop_requested() != 0, signals_take_save_request());
    stopping = stop_now;
    if (asked || t.checkpoint_due(r) || stopping) t.save();
    t.recalled_check();  // after the checkpoint of the step that filtered the evaluation set
  }
  t.progress_end();
  if (!stopping || t.finished()) return 0;
  // The signal may have come after this step's checkpoint decision.
  if (t.unsaved()) t.save();
  if (const int sig = signals_stop_requested())
    std::fprintf(stderr, "interrupted by signal %d at step %ld (during %s); resume with --resume\n",
                 sig, long(t.steps_done()), signals_stop_activity());
  else  // a data-parallel run: the signal reached another rank
    std::fprintf(stderr,
                 "stopped at step %ld with the other ranks (one was interrupted); resume "
                 "with --resume\n",
                 long(t.steps_done()));
  return 130;
}

}  // namespace

}  // namespace moelab
