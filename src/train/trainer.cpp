#include "train/trainer.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/gemm.hpp"
#include "core/rng.hpp"
#include "core/sysinfo.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::atomic<int> g_stop{0};
extern "C" void on_signal(int sig) {
  g_stop = sig;
}

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
    if (!j.is_discarded() && j.value("step", int64_t(0)) <= step) kept += line + "\n";
  }
  in.close();
  file_write_atomic(path, kept);
}

}  // namespace

int train_run(const Experiment& x, bool resume) {
  const int threads = x.threads > 0 ? x.threads : omp_get_num_procs();
  threads_set(threads);
  const DataDir data = data_open(x.data_dir);
  if (x.model.vocab_size < data.vocab_size)
    fail(fmt::format("{}: model vocab_size {} is smaller than the data's tokenizer ({})", x.source,
                     x.model.vocab_size, data.vocab_size));

  Model<float> model(x.model, x.batch_size, x.seq_len);
  model.init_weights(x.seed);
  AdamW<float> opt(model.layout, x.optimizer);

  // One training loader per subset used (phases and replay), one validation loader per subset.
  std::map<std::string, DataLoader> train, val;
  for (const PhaseConfig& p : x.phases)
    for (const std::string& s : {p.subset, p.replay_subset})
      if (!s.empty() && !train.contains(s)) {
        train.emplace(s, DataLoader(data, s, "train", x.seq_len, rng_mix(x.seed ^ fnv1a(s))));
        if (x.eval_every > 0) val.emplace(s, DataLoader(data, s, "val", x.seq_len, 0));
      }

  const std::string metrics_path = (fs::path(x.run_dir) / "metrics.jsonl").string();
  int64_t step = 0;
  const auto existing = checkpoint_list(x.run_dir);
  if (resume) {
    if (existing.empty()) fail(fmt::format("{}: no checkpoint to resume from", x.run_dir));
    const json state = checkpoint_load(existing.back(), model, &opt);
    step = state.at("step").get<int64_t>();
    for (auto& [name, pos] : state.at("loaders").items())
      if (train.contains(name))
        train.at(name).seek({pos.at("epoch").get<uint64_t>(), pos.at("index").get<uint64_t>()});
    metrics_truncate(metrics_path, step);
    std::fprintf(stderr, "resumed from %s (step %ld)\n", existing.back().c_str(), long(step));
  } else if (!existing.empty() || fs::exists(metrics_path)) {
    fail(
        fmt::format("{}: already holds a run; use --resume, or choose another run.dir", x.run_dir));
  }
  std::error_code ec;
  fs::create_directories(x.run_dir, ec);
  if (ec) fail(fmt::format("{}: cannot create the run directory ({})", x.run_dir, ec.message()));
  const FlopCounts flops = config_flops(x.model, x.seq_len);
  // run.json: what a report needs to know about this run without re-reading the TOML.
  {
    const ParamCounts pc = config_count(x.model);
    nlohmann::ordered_json phases = nlohmann::ordered_json::array();
    int64_t at = 0;
    for (const PhaseConfig& p : x.phases) {
      phases.push_back({{"name", p.name},
                        {"subset", p.subset},
                        {"start_step", at},
                        {"end_step", at + x.phase_steps(p)}});
      at += x.phase_steps(p);
    }
    const nlohmann::ordered_json run = {{"experiment", x.source},
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
  std::ofstream metrics(metrics_path, std::ios::app);
  if (!metrics) fail(fmt::format("{}: cannot write", metrics_path));

  // Forgetting metrics: the evaluation set, and the part of it frozen after filter_after.
  EvalSet full_set, frozen;
  bool have_frozen = false;
  const std::string frozen_path = (fs::path(x.run_dir) / "evalset.frozen.jsonl").string();
  if (!x.evalset.empty()) {
    full_set = evalset_load(x.evalset, data.fingerprint);
    if (fs::exists(frozen_path)) {
      frozen = evalset_load(frozen_path, data.fingerprint);
      have_frozen = true;
    }
  }

  const int64_t total = x.total_steps();
  const double peak = bench_fma_peak_gflops(threads, 0.3);
  const bool tty = ::isatty(2);
  auto state_json = [&](const std::string& phase) {
    json loaders = json::object();
    for (auto& [name, l] : train)
      loaders[name] = {{"epoch", l.position().epoch}, {"index", l.position().index}};
    return json{{"phase", phase}, {"loaders", loaders}, {"seed", x.seed}};
  };
  auto save = [&](const std::string& phase) {
    const std::string dir =
        checkpoint_save(x.run_dir, step, model, opt, state_json(phase), x.keep_last);
    std::fprintf(stderr, "%scheckpoint %s\n", tty ? "\n" : "", dir.c_str());
  };

  g_stop = 0;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::vector<int32_t> tok, tgt;
  const double t_start = time_now_s();
  double t_window = t_start;
  int64_t window_steps = 0, start_step = step;
  while (step < total) {
    // the phase of this step
    size_t pi = 0;
    int64_t phase_end = 0;
    for (; pi < x.phases.size(); pi++) {
      phase_end += x.phase_steps(x.phases[pi]);
      if (step < phase_end) break;
    }
    const PhaseConfig& phase = x.phases[pi];
    const double lr = x.schedule.lr(step);

    model.zero_grad();
    double lm = 0, aux = 0, z = 0;
    for (int64_t micro = 0; micro < x.grad_accum; micro++) {
      const bool replay =
          phase.replay_ratio > 0 &&
          rng_uniform(x.seed, 7000 + uint64_t(step), uint64_t(micro)) < phase.replay_ratio;
      train.at(replay ? phase.replay_subset : phase.subset).next(x.batch_size, tok, tgt);
      const Losses l = model.forward(tok, tgt);
      lm += l.lm / double(x.grad_accum);
      aux += l.aux / double(x.grad_accum);
      z += l.z / double(x.grad_accum);
      model.backward();
    }
    step++;
    window_steps++;
    nlohmann::ordered_json m = {
        {"step", step}, {"phase", phase.name}, {"tokens", step * x.tokens_per_step()}};
    if (!std::isfinite(lm + aux + z)) {
      if (!x.skip_nonfinite)
        fail(
            fmt::format("step {}: the loss is not finite ({}); stopped, the last checkpoint in {} "
                        "is intact (train.skip_nonfinite = true skips such batches)",
                        step, lm + aux + z, x.run_dir));
      m["skipped"] = "non-finite loss";
      metrics << m.dump() << "\n" << std::flush;
      continue;
    }
    // Gradients are sums over the micro-batches: norm and clipping act on their mean.
    const double norm = grad_global_norm<float>(model.layout, model.grads) / double(x.grad_accum);
    opt.update(model.params, model.grads, lr, grad_clip_scale(norm, x.clip) / double(x.grad_accum));

    const bool phase_done = step == phase_end;
    nlohmann::ordered_json forgetting;
    if (!x.evalset.empty()) {
      if (phase_done && phase.name == x.filter_after && !have_frozen) {
        // Keep the samples this model recalls (M_ex = 1); the same ones for the rest of the run.
        const EvalReport r = evaluate(model, *data.tokenizer, full_set, x.forgetting_batch);
        frozen = evalset_filter(full_set, r.ex_hit);
        evalset_write(frozen_path, frozen);
        have_frozen = true;
        forgetting["evalset"] = {{"samples", full_set.samples.size()},
                                 {"kept", frozen.samples.size()}};
      }
      const bool due = have_frozen && !frozen.samples.empty() &&
                       ((x.forgetting_every > 0 && step % x.forgetting_every == 0) ||
                        forgetting.contains("evalset") || phase_done);
      if (due)
        forgetting["metrics"] =
            evalreport_json(evaluate(model, *data.tokenizer, frozen, x.forgetting_batch));
    }
    if (step % x.log_every == 0 || phase_done || step == total || !forgetting.empty()) {
      const double now = time_now_s(), dt = now - t_window;
      const double tok_s = double(window_steps * x.tokens_per_step()) / std::max(dt, 1e-9);
      t_window = now, window_steps = 0;
      m["loss"] = lm;
      m["lr"] = lr;
      m["grad_norm"] = norm;
      if (x.model.is_moe() && x.model.num_local_experts > 1) {
        m["aux_loss"] = aux;
        m["z_loss"] = z;
        m["expert_load"] = model.expert_load();
      }
      if (x.eval_every > 0 && (step % x.eval_every == 0 || phase_done)) {
        nlohmann::ordered_json v = nlohmann::ordered_json::object();
        for (auto& [name, loader] : val) {
          loader.seek({0, 0});  // the same held-out batches every time
          double sum = 0;
          const int64_t n = std::min<int64_t>(
              x.eval_batches, int64_t(loader.sequences() / uint64_t(x.batch_size)) + 1);
          for (int64_t b = 0; b < n; b++) {
            loader.next(x.batch_size, tok, tgt);
            sum += model.forward(tok, tgt).lm;
          }
          v[name] = sum / double(n);
        }
        m["val_loss"] = v;
      }
      if (!forgetting.empty()) m["forgetting"] = forgetting;
      m["tokens_per_s"] = std::round(tok_s * 10) / 10;
      m["mfu"] = std::round(tok_s * flops.train_per_token / 1e9 / peak * 1e4) / 1e4;
      metrics << m.dump() << "\n" << std::flush;
      if (!metrics) fail(fmt::format("{}: write failed (disk full?)", metrics_path));
      const double rate = double(step - start_step) / std::max(now - t_start, 1e-9);
      std::fprintf(stderr, "%sstep %ld/%ld | %s | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s",
                   tty ? "\r" : "", long(step), long(total), phase.name.c_str(), lm, lr, tok_s,
                   eta(double(total - step) / rate).c_str(), tty ? "   " : "\n");
    }
    if (phase_done || (x.checkpoint_every > 0 && step % x.checkpoint_every == 0)) save(phase.name);
    if (g_stop) {
      if (!phase_done && !(x.checkpoint_every > 0 && step % x.checkpoint_every == 0))
        save(phase.name);
      std::fprintf(stderr, "%sinterrupted by signal %d at step %ld; resume with --resume\n",
                   tty ? "\n" : "", int(g_stop), long(step));
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      return 130;
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return 0;
}

}  // namespace moelab
