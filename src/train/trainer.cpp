#include "train/trainer.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/gemm.hpp"
#include "core/rng.hpp"
#include "core/signals.hpp"
#include "core/sysinfo.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"

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

// ----------------------------------------------------------------------------
// the run directory

// The checkpoint a start continues from ("" for step 0). A directory whose run stopped before
// its first checkpoint holds nothing worth keeping: it is started again, by a plain start or by
// --resume, instead of being refused both ways.
std::string run_dir_claim(const Experiment& x, bool resume) {
  const auto existing = checkpoint_list(x.run_dir);
  const fs::path dir = x.run_dir;
  if (!existing.empty()) {
    if (!resume)
      fail(fmt::format("{}: already holds a run; use --resume, or choose another run.dir",
                       x.run_dir));
    return existing.back();
  }
  std::error_code ec;
  if (fs::exists(dir / "metrics.jsonl", ec) || fs::exists(dir / "run.json", ec)) {
    std::fprintf(stderr, "%s: the run there stopped before its first checkpoint; starting again\n",
                 x.run_dir.c_str());
    for (const char* f : {"metrics.jsonl", "evalset.frozen.jsonl", "run.json"})
      fs::remove(dir / f, ec);
    return "";
  }
  if (resume) fail(fmt::format("{}: no checkpoint to resume from", x.run_dir));
  return "";
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
  const ojson run = {{"experiment", x.source},
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
                     {"phases", phases},
                     {"model", config_to_json(x.model)}};
  file_write_atomic((fs::path(x.run_dir) / "run.json").string(), run.dump(2) + "\n");
}

int64_t count_nonfinite(std::span<const float> v) {
  int64_t n = 0;
  for (float f : v) n += !std::isfinite(f);
  return n;
}

// ----------------------------------------------------------------------------
// one run

struct StepLosses {
  double lm = 0, aux = 0, z = 0, norm = 0;
  bool finite() const { return std::isfinite(lm + aux + z) && std::isfinite(norm); }
};

class TrainRun {
 public:
  TrainRun(const Experiment& x, int threads)
      : x_(x),
        data_(data_open(x.data_dir)),
        model_(x.model, x.batch_size, x.seq_len),
        opt_(model_.layout, x.optimizer),
        flops_(config_flops(x.model, x.seq_len)),
        metrics_path_((fs::path(x.run_dir) / "metrics.jsonl").string()),
        frozen_path_((fs::path(x.run_dir) / "evalset.frozen.jsonl").string()),
        tty_(::isatty(2)) {
    if (x.model.vocab_size < data_.vocab_size)
      fail(fmt::format("{}: model vocab_size {} is smaller than the data's tokenizer ({})",
                       x.source, x.model.vocab_size, data_.vocab_size));
    model_.init_weights(x.seed);
    // One training loader per subset used (phases and replay), one validation loader per subset.
    for (const PhaseConfig& p : x.phases)
      for (const std::string& s : {p.subset, p.replay_subset})
        if (!s.empty() && !train_.contains(s)) {
          train_.emplace(s, DataLoader(data_, s, "train", x.seq_len, rng_mix(x.seed ^ fnv1a(s))));
          if (x.eval_every > 0) val_.emplace(s, DataLoader(data_, s, "val", x.seq_len, 0));
        }
    peak_ = x.peak_gflops > 0 ? x.peak_gflops : bench_fma_peak_gflops(threads, 0.3);
  }

  void start(bool resume);
  int loop();

 private:
  void resume_from(const std::string& ckpt);
  void forgetting_setup();
  EvalSetLimits evalset_limits() const {
    return {data_.vocab_size, x_.model.vocab_size, x_.model.max_position_embeddings};
  }
  StepLosses forward_backward(const PhaseConfig& phase);
  void on_nonfinite(const StepLosses& r, ojson& m);
  ojson forgetting_duties(const PhaseConfig& phase, bool phase_done);
  ojson validation_losses();
  void log_step(ojson& m, const StepLosses& r, double lr, const PhaseConfig& phase,
                bool phase_done);
  std::string last_good() const;
  void save(const std::string& phase);

  const Experiment& x_;
  DataDir data_;
  Model<float> model_;
  AdamW<float> opt_;
  std::map<std::string, DataLoader> train_, val_;
  FlopCounts flops_;
  std::string metrics_path_, frozen_path_;
  std::ofstream metrics_;
  EvalSet full_set_, frozen_;  // forgetting: the evaluation set, and its part frozen after A
  bool have_frozen_ = false;
  bool tty_;
  double peak_ = 0;
  int64_t step_ = 0, start_step_ = 0, saved_step_ = -1, skipped_in_a_row_ = 0;
  std::string phase_name_;  // of the last step taken
  int64_t window_steps_ = 0;
  double t_start_ = 0, t_window_ = 0;
  std::vector<int32_t> tok_, tgt_;
};

void TrainRun::start(bool resume) {
  // Everything the run reads is checked before the run directory is touched.
  if (!x_.evalset.empty())
    full_set_ = evalset_load(x_.evalset, data_.fingerprint, evalset_limits());
  const std::string ckpt = run_dir_claim(x_, resume);
  if (!ckpt.empty()) resume_from(ckpt);
  std::error_code ec;
  fs::create_directories(x_.run_dir, ec);
  if (ec) fail(fmt::format("{}: cannot create the run directory ({})", x_.run_dir, ec.message()));
  run_info_write(x_, flops_);
  metrics_.open(metrics_path_, std::ios::app);
  if (!metrics_) fail(fmt::format("{}: cannot write", metrics_path_));
  forgetting_setup();
}

void TrainRun::resume_from(const std::string& ckpt) {
  const json state = checkpoint_load(ckpt, model_, &opt_);
  checkpoint_check_tokenizer(ckpt, state, data_.fingerprint, x_.data_dir);
  try {
    step_ = state.at("step").get<int64_t>();
    for (auto& [name, pos] : state.at("loaders").items())
      if (train_.contains(name))
        train_.at(name).seek({pos.at("epoch").get<uint64_t>(), pos.at("index").get<uint64_t>()});
  } catch (const json::exception&) {
    fail(fmt::format("{}/trainer_state.json: 'step' or 'loaders' is missing or mistyped", ckpt));
  }
  start_step_ = step_;
  metrics_truncate(metrics_path_, step_);
  std::fprintf(stderr, "resumed from %s (step %ld)\n", ckpt.c_str(), long(step_));
}

void TrainRun::forgetting_setup() {
  if (x_.evalset.empty()) return;
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
    frozen_ = evalset_load(frozen_path_, data_.fingerprint, evalset_limits());
    have_frozen_ = true;
  } else {
    fs::remove(frozen_path_, ec);
  }
}

// Gradients are summed over the micro-batches; the losses and the norm are their means.
StepLosses TrainRun::forward_backward(const PhaseConfig& phase) {
  const Activity doing("a training step");
  StepLosses r;
  model_.zero_grad();
  for (int64_t micro = 0; micro < x_.grad_accum; micro++) {
    const bool replay = phase.replay_ratio > 0 && rng_uniform(x_.seed, 7000 + uint64_t(step_),
                                                              uint64_t(micro)) < phase.replay_ratio;
    train_.at(replay ? phase.replay_subset : phase.subset).next(x_.batch_size, tok_, tgt_);
    const Losses l = model_.forward(tok_, tgt_);
    r.lm += l.lm / double(x_.grad_accum);
    r.aux += l.aux / double(x_.grad_accum);
    r.z += l.z / double(x_.grad_accum);
    model_.backward();
  }
  r.norm = grad_global_norm<float>(model_.layout, model_.grads) / double(x_.grad_accum);
  return r;
}

std::string TrainRun::last_good() const {
  const auto list = checkpoint_list(x_.run_dir);
  return list.empty() ? std::string("no checkpoint was written yet")
                      : fmt::format("the last good checkpoint is {}", list.back());
}

// A non-finite loss or gradient is never applied: the run stops, or skips the batch until too
// many in a row were skipped.
void TrainRun::on_nonfinite(const StepLosses& r, ojson& m) {
  const std::string what = std::isfinite(r.lm + r.aux + r.z)
                               ? fmt::format("the gradient norm is not finite ({})", r.norm)
                               : fmt::format("the loss is not finite ({})", r.lm + r.aux + r.z);
  if (!x_.skip_nonfinite)
    fail(
        fmt::format("step {}: {}; stopped before the update, {} (train.skip_nonfinite = true "
                    "skips such batches; a lower schedule.max_lr may help)",
                    step_, what, last_good()));
  if (++skipped_in_a_row_ > x_.max_skips)
    fail(
        fmt::format("step {}: {} batches in a row were skipped ({}); stopped, {} (see "
                    "train.max_skips)",
                    step_, skipped_in_a_row_, what, last_good()));
  m["skipped"] = std::isfinite(r.lm + r.aux + r.z) ? "non-finite gradient" : "non-finite loss";
}

ojson TrainRun::forgetting_duties(const PhaseConfig& phase, bool phase_done) {
  ojson forgetting;
  if (x_.evalset.empty()) return forgetting;
  const Activity doing("evaluation");
  if (phase_done && phase.name == x_.filter_after && !have_frozen_) {
    // Keep the samples this model recalls (M_ex = 1); the same ones for the rest of the run.
    const EvalReport r = evaluate(model_, *data_.tokenizer, full_set_, x_.forgetting_batch);
    frozen_ = evalset_filter(full_set_, r.ex_hit);
    evalset_write(frozen_path_, frozen_);
    have_frozen_ = true;
    forgetting["evalset"] = {{"samples", full_set_.samples.size()},
                             {"kept", frozen_.samples.size()}};
  }
  const bool due = have_frozen_ && !frozen_.samples.empty() &&
                   ((x_.forgetting_every > 0 && step_ % x_.forgetting_every == 0) ||
                    forgetting.contains("evalset") || phase_done);
  if (due)
    forgetting["metrics"] =
        evalreport_json(evaluate(model_, *data_.tokenizer, frozen_, x_.forgetting_batch));
  return forgetting;
}

// Mean loss on the same held-out batches of every subset.
ojson TrainRun::validation_losses() {
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

void TrainRun::log_step(ojson& m, const StepLosses& r, double lr, const PhaseConfig& phase,
                        bool phase_done) {
  const double now = time_now_s(), dt = now - t_window_;
  const double tok_s = double(window_steps_ * x_.tokens_per_step()) / std::max(dt, 1e-9);
  t_window_ = now, window_steps_ = 0;
  m["loss"] = r.lm;
  m["lr"] = lr;
  m["grad_norm"] = r.norm;
  if (x_.model.is_moe() && x_.model.num_local_experts > 1) {
    m["aux_loss"] = r.aux;
    m["z_loss"] = r.z;
    m["expert_load"] = model_.expert_load();
  }
  if (x_.eval_every > 0 && (step_ % x_.eval_every == 0 || phase_done))
    m["val_loss"] = validation_losses();
  m["tokens_per_s"] = std::round(tok_s * 10) / 10;
  m["mfu"] = std::round(tok_s * flops_.train_per_token / 1e9 / peak_ * 1e4) / 1e4;
  const int64_t total = x_.total_steps();
  const double rate = double(step_ - start_step_) / std::max(now - t_start_, 1e-9);
  std::fprintf(stderr, "%sstep %ld/%ld | %s | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s",
               tty_ ? "\r" : "", long(step_), long(total), phase.name.c_str(), r.lm, lr, tok_s,
               eta(double(total - step_) / rate).c_str(), tty_ ? "   " : "\n");
}

void TrainRun::save(const std::string& phase) {
  // A checkpoint is only ever a good one: non-finite weights stop the run instead.
  const int64_t bad = count_nonfinite(model_.params);
  if (bad > 0)
    fail(fmt::format("step {}: {} parameters are not finite; stopped without saving, {}", step_,
                     bad, last_good()));
  json loaders = json::object();
  for (auto& [name, l] : train_)
    loaders[name] = {{"epoch", l.position().epoch}, {"index", l.position().index}};
  const json state = {{"phase", phase},
                      {"loaders", loaders},
                      {"seed", x_.seed},
                      {"tokenizer_fingerprint", data_.fingerprint}};
  const Activity doing("checkpoint writing");
  const std::string dir = checkpoint_save(x_.run_dir, step_, model_, opt_, state, x_.keep_last);
  saved_step_ = step_;
  std::fprintf(stderr, "%scheckpoint %s\n", tty_ ? "\n" : "", dir.c_str());
}

int TrainRun::loop() {
  const Activity doing("training");  // between the parts named in detail
  const int64_t total = x_.total_steps();
  t_start_ = t_window_ = time_now_s();
  while (step_ < total && !signals_stop_requested()) {
    size_t pi = 0;
    int64_t phase_end = 0;
    for (; pi < x_.phases.size(); pi++) {
      phase_end += x_.phase_steps(x_.phases[pi]);
      if (step_ < phase_end) break;
    }
    const PhaseConfig& phase = x_.phases[pi];
    const double lr = x_.schedule.lr(step_);
    const StepLosses r = forward_backward(phase);
    step_++;
    window_steps_++;
    ojson m = {{"step", step_}, {"phase", phase.name}, {"tokens", step_ * x_.tokens_per_step()}};
    const bool applied = r.finite();
    if (applied) {
      skipped_in_a_row_ = 0;
      opt_.update(model_.params, model_.grads, lr,
                  grad_clip_scale(r.norm, x_.clip) / double(x_.grad_accum));
    } else {
      on_nonfinite(r, m);
    }
    const bool phase_done = step_ == phase_end;
    const ojson forgetting = forgetting_duties(phase, phase_done);
    const bool log_due = step_ % x_.log_every == 0 || phase_done || step_ == total;
    if (applied && (log_due || !forgetting.empty())) log_step(m, r, lr, phase, phase_done);
    if (!forgetting.empty()) m["forgetting"] = forgetting;
    if (!applied || log_due || !forgetting.empty()) metrics_ << m.dump() << "\n" << std::flush;
    if (!metrics_) fail(fmt::format("{}: write failed (disk full?)", metrics_path_));
    const bool asked = signals_take_save_request();  // SIGUSR1
    if (asked || phase_done || (x_.checkpoint_every > 0 && step_ % x_.checkpoint_every == 0) ||
        signals_stop_requested())
      save(phase.name);
    phase_name_ = phase.name;
  }
  if (tty_) std::fprintf(stderr, "\n");
  const int sig = signals_stop_requested();
  if (sig == 0 || step_ == total) return 0;
  // The signal may have come after this step's checkpoint decision.
  if (saved_step_ != step_ && step_ > start_step_) save(phase_name_);
  std::fprintf(stderr, "interrupted by signal %d at step %ld (during %s); resume with --resume\n",
               sig, long(step_), signals_stop_activity());
  return 130;
}

}  // namespace

int train_run(const Experiment& x, bool resume) {
  const StopScope stop;  // from here on a signal asks for a checkpoint and a clean stop
  const int threads = x.threads > 0 ? x.threads : omp_get_num_procs();
  threads_set(threads);
  TrainRun run(x, threads);
  run.start(resume);
  return run.loop();
}

}  // namespace moelab
