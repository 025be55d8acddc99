#include "train/trainer.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "core/signals.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "kernels/fma_peak.hpp"
#include "train/checkpoint.hpp"
#include "train/collective.hpp"
#include "train/data_parallel.hpp"
#include "train/model_setup.hpp"
#include "train/run_dir.hpp"
#include "train/run_page.hpp"
#include "train/zero.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// Mixing replay draws micro-batch m of step s from stream kStreamMixReplay + s: one stream per
// step keeps a resumed run's draws those of an unbroken one, and the offset keeps the streams
// clear of the weight initialization's (one per tensor, numbered from 0) under the same run.seed.
// Changing it changes the data order of every mixing run.
constexpr uint64_t kStreamMixReplay = 7000;

int64_t count_nonfinite(std::span<const float> v) {
  int64_t n = 0;
  for (float f : v) n += !std::isfinite(f);
  return n;
}

}  // namespace

// ----------------------------------------------------------------------------
// setup and resume

Trainer::Trainer(const Experiment& x, TrainerOptions options)
    : x_(x),
      options_(std::move(options)),
      model_(x.model, x.batch_size, x.seq_len),
      // ZeRO-1: this rank keeps the moments of its shard alone (train/zero.hpp)
      opt_(model_setup_freeze(model_, x_), x.optimizer, model_.device(),
           x.zero && train_collective() ? train_collective()->rank() : 0,
           x.zero && train_collective() ? train_collective()->size() : 1),
      flops_(config_flops(x.model, x.seq_len)),
      metrics_path_((fs::path(x.run_dir) / "metrics.jsonl").string()),
      tty_(::isatty(2)),
      comm_(train_collective()) {
  model_.init_weights(x.seed);
  if (comm_) data_parallel_setup();
}

// Data parallel (train/data_parallel.hpp): each rank takes its share of every step's
// micro-batches, and the gradient sums overlap the backward pass.
void Trainer::data_parallel_setup() {
  data_parallel_check(x_.source, x_.grad_accum, comm_->size());
  model_.grad_sync();  // the frozen set is final: the buckets view the packed gradients
  sync_ = std::make_unique<GradSync>(model_.layout, std::span<float>(model_.grads),
                                     x_.model.num_hidden_layers, *comm_);
  sync_->overlap = options_.overlap_grad_sums;
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
  peak_ = x_.peak_gflops > 0 ? x_.peak_gflops : bench_fma_peak_gflops(threads_get(), 0.3);
  // Everything the run reads is checked before the run directory is touched.
  for (const auto& h : options_.hooks) h->on_open(*this);
  const RunClaim claim = run_dir_claim(x_, resume);
  if (comm_) {  // before anything is written: every rank runs the same
    comm_->same("the experiment (its file after --set, and the model)",
                fnv1a(x_.text + config_to_json(x_.model).dump()));
    comm_->same("the data's tokenizer", data_->fingerprint);
    comm_->same("the checkpoint it starts from", fnv1a(claim.ckpt));
  }
  if (!claim.ckpt.empty())
    resume_from(claim.ckpt);
  else if (!x_.init_from.empty())
    model_setup_init_from(model_, x_, data_->fingerprint);
  model_setup_print_frozen(model_, x_);
  t_start_ = t_window_ = time_now_s();  // the speed counts this session's steps only
  if (!train_writer()) return;          // rank 0 writes the run's files
  run_dir_create(x_, claim.stale);
  run_dir_write_info(x_, flops_, options_.hooks);
  metrics_.open(metrics_path_, std::ios::app);
  if (!metrics_) fail(fmt::format("{}: cannot write", metrics_path_));
  for (const auto& h : options_.hooks) h->on_start(*this);
}

void Trainer::metrics_write(const ojson& line) {
  metrics_ << line.dump() << "\n" << std::flush;
  if (!metrics_) fail(fmt::format("{}: write failed (disk full?)", metrics_path_));
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
  for (const auto& h : options_.hooks) h->restore_state(*this, state, ckpt);
  start_step_ = step_;
  if (train_writer()) run_dir_truncate_metrics(metrics_path_, step_);
  std::fprintf(stderr, "resumed from %s (step %ld)\n", ckpt.c_str(), long(step_));
}

// ----------------------------------------------------------------------------
// a step

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

// The step's sums over the ranks: the gradients (started during the backward pass), then the
// losses, the routers' sums and the routing counts, so that every rank holds what one process
// would have (to float rounding: the sums' order differs).
void Trainer::reduce_step(StepStats& r) {
  if (!comm_) return;
  comm_wait_s_ += sync_->finish();
  comm_steps_++;
  step_stats_sum(*comm_, r);
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
      step_stats_add_router(r.router, l, model_.route_counts());
      if (micro == last) model_.on_grads_ready = [this](int64_t layer) { sync_->ready(layer); };
      model_.backward();
      model_.on_grads_ready = nullptr;
    }
    reduce_step(r);
    step_stats_finish_router(r.router, model_.route_counts(), accum);
  }
  {
    const ProfileScope prof(model_.device().profile, "optimizer");
    r.grad_norm =
        grad_global_norm<float>(model_.layout, model_.grads, model_.device().ops<float>()) / accum;
    if (counted) step_++, window_steps_++;
    r.step = step_;
    r.applied = std::isfinite(r.total()) && std::isfinite(r.grad_norm);
    if (r.applied) {
      skipped_in_a_row_ = 0;
      opt_.update(model_.params, model_.grads, lr, grad_clip_scale(r.grad_norm, x_.clip) / accum);
      // ZeRO-1: this rank updated its shard; every rank takes every shard's parameters
      if (opt_.shard_ranks() > 1) zero_gather_params(*comm_, opt_, model_.params, model_.grads);
      // the step's loads move the balance bias (methods.md §3.7.1)
      if (x_.model.router_balance.on()) model_.balance_update();
    } else {
      on_nonfinite(r);
    }
  }
  return r;
}

StepStats Trainer::update(const BatchSource& next, double lr) {
  return train_batch(next, lr, false);
}

StepStats Trainer::step() {
  const Experiment::PhaseAt at = x_.phase_at(step_);
  const PhaseConfig& phase = x_.phases[at.index];
  // A micro-batch comes from the replay subset with probability replay_ratio, decided by the
  // seed, the step and the micro-batch alone (a resumed run decides the same).
  const int64_t at_step = step_;
  std::vector<TrainedBatch> trained;
  const BatchSource next = [&](int64_t micro) {
    const bool replay =
        phase.replay_ratio > 0 && rng_uniform(x_.seed, kStreamMixReplay + uint64_t(at_step),
                                              uint64_t(micro)) < phase.replay_ratio;
    const std::string& subset = replay ? phase.replay_subset : phase.subset;
    TrainedBatch& b = trained.emplace_back(TrainedBatch{subset, {}});
    if (comm_ && micro % comm_->size() != comm_->rank()) {  // another rank reads it
      train_.at(subset).skip(x_.batch_size, b.sequences);
      return MicroBatch{};
    }
    train_.at(subset).next(x_.batch_size, tok_, tgt_, &b.sequences);
    return MicroBatch{tok_, tgt_};
  };
  StepStats r = step(next, x_.schedule.lr(step_));
  r.phase = at.index;
  r.trained = std::move(trained);
  phase_name_ = phase.name;
  for (const auto& h : options_.hooks) h->after_step(*this, r);
  return r;
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
                    step_, what, run_dir_last_good(x_.run_dir)),
        step_, true);
  if (++skipped_in_a_row_ > x_.max_skips)
    throw TrainStopped(
        fmt::format("step {}: {} batches in a row were skipped ({}); stopped, {} (see "
                    "train.max_skips)",
                    step_, skipped_in_a_row_, what, run_dir_last_good(x_.run_dir)),
        step_, true);
}

// ----------------------------------------------------------------------------
// evaluation

StepEval Trainer::evaluate(const StepStats& r) {
  StepEval e;
  if (!train_writer()) return e;  // rank 0 evaluates and logs; the others wait at the next sum
  const bool phase_done = phase_ends_at(r.step);
  for (const auto& h : options_.hooks) h->on_evaluate(*this, r);
  for (const auto& h : options_.hooks) h->metrics(r, e.hooks);
  // Validation runs on the steps whose losses are logged.
  if (r.applied && log_due(r, e) && x_.eval_every > 0 &&
      (r.step % x_.eval_every == 0 || phase_done))
    e.val_loss = validation_losses();
  return e;
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

bool Trainer::phase_ends_at(int64_t step) const {
  return step == x_.phase_at(step - 1).end;
}

bool Trainer::log_due(const StepStats& r, const StepEval& e) const {
  return r.step % x_.log_every == 0 || phase_ends_at(r.step) || r.step == x_.total_steps() ||
         !e.hooks.empty();
}

void Trainer::log(const StepStats& r, const StepEval& e) {
  if (!train_writer()) return;
  const PhaseConfig& phase = x_.phases[r.phase];
  ojson m = {{"step", r.step}, {"phase", phase.name}, {"tokens", r.step * x_.tokens_per_step()}};
  const bool due = log_due(r, e);
  if (!r.applied)
    m["skipped"] = std::isfinite(r.total()) ? "non-finite gradient" : "non-finite loss";
  else if (due) {
    step_stats_log(r, m);
    if (!e.val_loss.is_null()) m["val_loss"] = e.val_loss;
    log_progress(m, r);
  }
  for (const auto& [key, value] : e.hooks.items()) m[key] = value;
  if (!r.applied || due) metrics_write(m);
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
               r.lr, tok_s, duration_format(double(total - step_) / rate).c_str(),
               tty_ ? "   " : "\n");
}

void Trainer::progress_end() const {
  if (tty_) std::fprintf(stderr, "\n");
}

bool Trainer::checkpoint_due(const StepStats& r) const {
  return phase_ends_at(r.step) || (x_.checkpoint_every > 0 && r.step % x_.checkpoint_every == 0);
}

void Trainer::save() {
  // A checkpoint is only ever a good one: non-finite weights stop the run instead.
  const int64_t bad = count_nonfinite(model_.params);
  if (bad > 0)
    throw TrainStopped(fmt::format("step {}: {} parameters are not finite; stopped without "
                                   "saving, {}",
                                   step_, bad, run_dir_last_good(x_.run_dir)),
                       step_, true);
  // ZeRO-1: rank 0 writes whole moments, gathered from every rank (any rank count resumes them)
  std::optional<AdamW<float>> gathered;
  if (opt_.shard_ranks() > 1) gathered = zero_gather_moments(*comm_, opt_);
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
  for (const auto& h : options_.hooks) h->save_state(state);
  const Activity doing("checkpoint writing");
  const std::string dir =
      checkpoint_save(x_.run_dir, step_, model_, gathered ? *gathered : opt_, state, x_.keep_last);
  saved_step_ = step_;
  std::fprintf(stderr, "%scheckpoint %s\n", tty_ ? "\n" : "", dir.c_str());
}

void Trainer::step_end(const StepStats& r) {
  for (const auto& h : options_.hooks) h->on_step_end(*this, r);
}

// ----------------------------------------------------------------------------
// a run

TrainStopped::TrainStopped(const std::string& msg, int64_t step_, bool nonfinite_)
    : Error(one_line(msg)), step(step_), nonfinite(nonfinite_) {}

namespace {
int train_loop(const Experiment& x, bool resume, TrainerHooks extra, int64_t& steps);
}  // namespace

int train_run(const Experiment& x, bool resume, TrainerHooks extra) {
  int64_t steps = -1;  // taken so far, for the error's record (-1: before the run started)
  // The run's page gets its last version once the run started (an earlier error leaves the
  // folder, and the page of a run before, as they were).
  try {
    const int rc = train_loop(x, resume, std::move(extra), steps);
    run_page_finish(x, rc, "");
    return rc;
  } catch (const std::exception& e) {
    if (steps >= 0) {
      run_page_finish(x, 0, one_line(e.what()));
    }
    if (dynamic_cast<const TrainStopped*>(&e)) {
      throw;
    }
    throw TrainStopped(e.what(), steps, false);
  }
}

namespace {

int train_loop(const Experiment& x, bool resume, TrainerHooks extra, int64_t& steps) {
  const StopScope stop;  // from here on a signal asks for a checkpoint and a clean stop
  threads_set(x.threads > 0 ? x.threads : omp_get_num_procs());
  TrainerOptions options{.hooks = trainer_hooks_from_experiment(x)};
  for (auto& hook : extra) {
    options.hooks.push_back(std::move(hook));
  }
  // MOELAB_DIST_OVERLAP=0: the gradient sums of a data-parallel run start after the backward pass
  const char* overlap = std::getenv("MOELAB_DIST_OVERLAP");
  options.overlap_grad_sums = !(overlap && std::string(overlap) == "0");
  Trainer t(x, std::move(options));
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
    t.step_end(r);  // after the step's checkpoint, which a hook that stops the run keeps
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
