#include "cli/bench.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "data/tokenizer.hpp"
#include "eval/decode.hpp"
#include "eval/evalset.hpp"
#include "kernels/fma_peak.hpp"
#include "kernels/gemm.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"
#include "train/trainer.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// training throughput

namespace {

// The profile's rows, largest first, as ms per unit (a step, or the whole run) to stderr and
// under out[key]; "other" is what no scope covered. With `flops` (FLOPs per unit of the parts
// the FLOP count knows, by scope name) and a peak, a row also gets its GFLOP/s and its share
// of the peak: what each product reaches, and what the rest costs.
void profile_report(nlohmann::ordered_json& out, const char* key, double total_s, double units,
                    const char* unit, const std::map<std::string, double>& flops = {},
                    double peak_gflops = 0) {
  auto rows = profile().seconds;
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second > b.second; });
  double covered = 0;
  nlohmann::ordered_json p, rates;
  for (auto& [name, s] : rows) {
    p[name] = std::round(s / units * 1e5) / 1e2;
    covered += s;
  }
  p["other"] = std::round((total_s - covered) / units * 1e5) / 1e2;
  out[key] = p;
  std::fprintf(stderr, "%-26s %10s %7s %9s %7s\n", "part", unit, "share", "GFLOP/s", "peak");
  for (auto& [name, s] : rows) {
    const auto it = flops.find(name);
    if (it == flops.end() || s <= 0 || peak_gflops <= 0) {
      std::fprintf(stderr, "%-26s %10.2f %6.1f%%\n", name.c_str(), s / units * 1e3,
                   100 * s / total_s);
      continue;
    }
    const double rate = it->second * units / s / 1e9;
    rates[name] = std::round(rate * 10) / 10;
    std::fprintf(stderr, "%-26s %10.2f %6.1f%% %9.1f %6.1f%%\n", name.c_str(), s / units * 1e3,
                 100 * s / total_s, rate, 100 * rate / peak_gflops);
  }
  std::fprintf(stderr, "%-26s %10.2f %6.1f%%\n", "other", (total_s - covered) / units * 1e3,
               100 * (total_s - covered) / total_s);
  if (!rates.empty()) {
    out[std::string(key) + "_gflops"] = rates;
  }
}

// FLOPs per step of each profiled product: the forward parts of the FLOP count, and their
// backward at twice the forward.
std::map<std::string, double> profile_flops(const FlopCounts& fc, double tokens) {
  std::map<std::string, double> f;
  for (const auto& [part, per_token] : fc.forward_parts) {
    f[part + " fwd"] = per_token * tokens;
    f[part + " bwd"] = 2 * per_token * tokens;
  }
  return f;
}

}  // namespace

void bench_train(const BenchTrainOptions& o) {
  std::ifstream f(o.config);
  if (!f) fail(o.config + ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::parse_error& e) {
    fail(fmt::format("{}: invalid JSON ({})", o.config, e.what()));
  }
  if (!j.is_object() || !j.contains("model"))
    fail(o.config + ": a bench file needs a \"model\" object, \"batch_size\" and \"seq_len\"");
  for (auto& [key, _] : j.items())
    if (key != "model" && key != "batch_size" && key != "seq_len" && key != "name")
      fail(fmt::format("{}: '{}' is not a known key", o.config, key));
  const ModelConfig cfg = config_from_json(j["model"], o.config + ": model");
  const int64_t B = j.value("batch_size", 8), T = j.value("seq_len", 256);
  if (o.steps < 1) fail("--steps must be >= 1");
  if (o.peak_gflops < 0 || o.bf16_peak_gflops < 0)
    fail("--peak and --bf16-peak must be >= 0 GFLOP/s (0 = measure)");
  const int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  threads_set(threads);
  gemm_set_precision(o.bf16 ? Precision::BF16 : Precision::F32);

  // The trainer's own step (forward, backward, clipping, AdamW) on one batch of random tokens.
  Experiment x;
  x.source = o.config;
  x.model = cfg;
  x.batch_size = B, x.seq_len = T, x.grad_accum = 1;
  x.seed = 1234;
  x.clip = 1.0;
  x.skip_nonfinite = true, x.max_skips = INT64_MAX;  // a benchmark measures, whatever the loss
  x.freeze = o.freeze;
  Trainer trainer(x);
  std::vector<int32_t> tokens(size_t(B * T)), targets(size_t(B * T));
  for (size_t i = 0; i < tokens.size(); i++) {
    tokens[i] = int32_t(rng_u64(7, 0, i) % uint64_t(cfg.vocab_size));
    targets[i] = int32_t(rng_u64(7, 1, i) % uint64_t(cfg.vocab_size));
  }
  const BatchSource batch = [&](int64_t) { return MicroBatch{tokens, targets}; };
  for (int i = 0; i < o.warmup; i++) trainer.step(batch, 1e-4);
  profile().clear();
  profile().on = o.profile;
  const double t0 = time_now_s();
  StepStats last;
  for (int i = 0; i < o.steps; i++) last = trainer.step(batch, 1e-4);
  const double dt = time_now_s() - t0;
  profile().on = false;

  // MFU is against the peak of the arithmetic the run's GEMMs use: the bf16 dot-product peak for
  // a bf16 run (its products run on AVX512-BF16, at twice the fp32 FMA's FLOPs where the
  // hardware runs both at one rate), the fp32 FMA peak otherwise; against the fp32 peak a bf16
  // run would report utilisations above 100%.
  const double fp32_peak = o.peak_gflops > 0 ? o.peak_gflops : bench_fma_peak_gflops(threads);
  std::optional<double> bf16_peak;
  if (o.bf16) {
    bf16_peak = o.bf16_peak_gflops > 0 ? std::optional<double>(o.bf16_peak_gflops)
                                       : bench_bf16_peak_gflops(threads);
  }
  const double peak = bf16_peak ? *bf16_peak : fp32_peak;
  const ParamCounts pc = config_count(cfg);
  const FlopCounts fc = config_flops(cfg, T);
  const double tok_s = double(B * T * o.steps) / dt;
  const double gflops = tok_s * fc.train_per_token / 1e9;
  // Memory the design needs: params (4 bytes a parameter), gradients and two moments (12 bytes
  // a trainable parameter: a frozen tensor has none), activations. Adapters and MoE-CT parts
  // count from the layout.
  const ParamLayout& lay = trainer.model().layout;
  int64_t trainable = 0;
  for (const TensorView& t : lay.tensors) trainable += t.frozen ? 0 : t.numel;
  const double estimate = 4.0 * double(lay.total) + 12.0 * double(trainable) +
                          double(trainer.model().activation_bytes());
  nlohmann::ordered_json out = {
      {"config", o.config},
      {"threads", threads},
      {"precision", o.bf16 ? "bf16" : "fp32"},
      {"batch_size", B},
      {"seq_len", T},
      {"steps", o.steps},
      {"params_total", lay.total},
      {"params_trainable", trainable},
      {"params_active", pc.active},
      {"tokens_per_s", std::round(tok_s * 10) / 10},
      {"step_ms", std::round(dt / o.steps * 1e4) / 10},
      {"flops_per_token", fc.train_per_token},
      {"gflops", std::round(gflops * 10) / 10},
      {"peak_gflops", std::round(peak * 10) / 10},
      {"peak_precision", bf16_peak ? "bf16" : "fp32"},
      {"mfu", std::round(gflops / peak * 1e4) / 1e4},
      {"fp32_peak_gflops", std::round(fp32_peak * 10) / 10},
      {"peak_rss_mb", std::round(double(peak_rss_bytes()) / 1048576.0 * 10) / 10},
      {"rss_estimate_mb", std::round(estimate / 1048576.0 * 10) / 10},
      {"loss", last.total()}};
  if (o.bf16) {
    // null where the CPU has no AVX512-BF16 (the MFU above is then against the fp32 peak).
    out["bf16_peak_gflops"] =
        bf16_peak ? nlohmann::json(std::round(*bf16_peak * 10) / 10) : nlohmann::json(nullptr);
    out["mfu_fp32_peak"] = std::round(gflops / fp32_peak * 1e4) / 1e4;
  }
  if (o.profile) {
    profile_report(out, "profile_ms_per_step", dt, double(o.steps), "ms/step",
                   profile_flops(fc, double(B * T)), peak);
  }
  std::cout << out.dump() << std::endl;
}

void bench_peak(int threads) {
  const double fp32 = bench_fma_peak_gflops(threads, 1.0);
  const std::optional<double> bf16 = bench_bf16_peak_gflops(threads, 1.0);
  const PeakIsa isa = bench_peak_isa();
  const std::string bf16_text = bf16 ? fmt::format("{:.1f}", *bf16) : "null";
  const std::string bf16_isa = isa.bf16.empty() ? "null" : "\"" + isa.bf16 + "\"";
  std::printf(
      "{\"threads\": %d, \"fma_peak_gflops\": %.1f, \"bf16_peak_gflops\": %s, \"fp32_isa\": "
      "\"%s\", \"bf16_isa\": %s, \"amx_bf16\": %s}\n",
      threads, fp32, bf16_text.c_str(), isa.fp32.c_str(), bf16_isa.c_str(),
      isa.amx_bf16 ? "true" : "false");
}

// ----------------------------------------------------------------------------
// decoding throughput

void bench_eval(const BenchEvalOptions& o) {
  if (o.config.empty() == o.checkpoint.empty())
    fail("bench eval: give --config or --checkpoint (one of them)");
  const ModelConfig cfg = config_load(
      o.checkpoint.empty() ? o.config
                           : (std::filesystem::path(o.checkpoint) / "config.json").string());
  if (o.batch < 1 || o.samples < 1 || o.prompt < 1 || o.generate < 1)
    fail("bench eval: --samples, --batch, --prompt and --new must be positive");
  const int threads = o.threads > 0 ? o.threads : omp_get_num_procs();
  threads_set(threads);
  Model<float> model(cfg, 1, 1);
  model.init_weights(1234);
  if (!o.checkpoint.empty()) checkpoint_load(o.checkpoint, model, nullptr);
  Decoder dec(model, o.batch, o.prompt + o.generate);
  std::vector<int32_t> prompts(size_t(o.batch * o.prompt));
  for (size_t i = 0; i < prompts.size(); i++)
    prompts[i] = int32_t(rng_u64(3, 0, i) % uint64_t(cfg.vocab_size));
  dec.greedy(prompts, o.prompt, 2);  // warm-up
  const int64_t rounds = (o.samples + o.batch - 1) / o.batch;
  const double t0 = time_now_s();
  for (int64_t r = 0; r < rounds; r++) dec.greedy(prompts, o.prompt, o.generate);
  const double dt = time_now_s() - t0;
  const double n = double(rounds * o.batch);

  // The whole evaluation as the trainer runs it (M_in and M_ex greedy passes plus teacher
  // forcing) on a synthetic set of the same sizes; a digit tokenizer decodes for M_ex.
  struct DigitTokenizer final : Tokenizer {
    std::vector<int32_t> encode(std::string_view) const override { return {}; }
    std::string decode(std::span<const int32_t> ids) const override {
      std::string s;
      for (int32_t id : ids) s += std::to_string(id) + " ";
      return s;
    }
    int64_t vocab_size() const override { return INT32_MAX; }  // decodes any id
    int32_t eot_id() const override { return 0; }
    uint64_t fingerprint() const override { return 0; }
    std::string name() const override { return "digits"; }
  } digits;
  EvalSet set;
  set.names = {"x"}, set.types = {"MISC"};
  auto draw = [&](uint64_t stream, int64_t len) {
    std::vector<int32_t> v(static_cast<size_t>(len));
    for (size_t i = 0; i < v.size(); i++)
      v[i] = int32_t(rng_u64(stream, uint64_t(set.samples.size()), i) % uint64_t(cfg.vocab_size));
    return v;
  };
  for (int64_t i = 0; i < o.samples; i++)
    set.samples.push_back(
        EvalSample{0, "7", draw(4, o.prompt), draw(5, o.prompt), draw(6, o.generate)});
  profile().clear();
  profile().on = o.profile;
  const double t1 = time_now_s();
  evaluate(model, digits, set, o.batch);
  const double de = time_now_s() - t1;
  profile().on = false;

  const double model_mb =
      double(model.params.size() * 4 + model.index.size() * 4 + model.codes.size()) / 1e6;
  nlohmann::ordered_json out = {
      {"config", o.checkpoint.empty() ? o.config : o.checkpoint},
      {"threads", threads},
      {"model_mb", std::round(model_mb * 10) / 10},
      {"peak_rss_mb", std::round(double(peak_rss_bytes()) / 1e5) / 10},
      {"samples", int64_t(n)},
      {"batch", o.batch},
      {"prompt", o.prompt},
      {"generate", o.generate},
      {"seconds", std::round(dt * 1000) / 1000},
      {"samples_per_s", std::round(n / dt * 10) / 10},
      {"generated_tokens_per_s", std::round(n * double(o.generate) / dt * 10) / 10},
      {"processed_tokens_per_s", std::round(n * double(o.prompt + o.generate) / dt * 10) / 10},
      {"evaluate_samples", o.samples},
      {"evaluate_seconds", std::round(de * 1000) / 1000},
      {"evaluate_seconds_per_2000_samples",
       std::round(2000.0 * de / double(o.samples) * 100) / 100}};
  if (o.profile) profile_report(out, "profile_ms", de, 1.0, "ms");
  std::cout << out.dump() << std::endl;
}

}  // namespace moelab
