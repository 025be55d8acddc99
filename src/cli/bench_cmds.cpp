// moelab bench peak, moelab bench train, moelab bench eval: the options; the measurements are
// in cli/bench.cpp.
#include <memory>

#include "cli/bench.hpp"
#include "cli/commands.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"

namespace moelab {

void command_bench_peak(CLI::App& bench, Commands& c) {
  auto threads = std::make_shared<int>(0);
  auto* cmd =
      bench.add_subcommand("peak", "measured fp32 FMA and bf16 dot-product peaks (GFLOP/s)");
  cmd->add_option("--threads", *threads, "threads (default: all cores)");
  c.add(cmd, [threads] {
    bench_peak(*threads > 0 ? *threads : threads_get());
    return 0;
  });
}

void command_bench_train(CLI::App& bench, Commands& c) {
  auto o = std::make_shared<BenchTrainOptions>();
  auto* cmd = bench.add_subcommand("train", "training tokens/s, MFU and peak memory");
  cmd->add_option("--config", o->config, "bench JSON (model, batch_size, seq_len)")->required();
  cmd->add_option("--steps", o->steps, "timed steps");
  cmd->add_option("--warmup", o->warmup, "untimed steps first");
  cmd->add_option("--threads", o->threads, "threads (default: all cores)");
  cmd->add_option("--peak", o->peak_gflops, "fp32 FMA peak in GFLOP/s (default: measure)");
  cmd->add_option(
      "--bf16-peak", o->bf16_peak_gflops,
      "bf16 dot-product peak in GFLOP/s, the MFU denominator of --bf16 (default: measure)");
  cmd->add_flag("--profile", o->profile, "per-op time breakdown (stderr and JSON)");
  cmd->add_flag("--bf16", o->bf16, "linear layers in bf16 with fp32 accumulation");
  cmd->add_option("--freeze", o->freeze, "regex of tensor names not trained (repeatable)");
  c.add(cmd, [o] { return bench_train(*o), 0; });
}

void command_bench_eval(CLI::App& bench, Commands& c) {
  auto o = std::make_shared<BenchEvalOptions>();
  auto* cmd = bench.add_subcommand("eval", "greedy decoding throughput (KV cache)");
  cmd->add_option("--config", o->config, "bench or model JSON (random weights)");
  cmd->add_option("--checkpoint", o->checkpoint, "or a checkpoint folder (its config and weights)");
  cmd->add_option("--samples", o->samples, "sequences to decode");
  auto* slots = cmd->add_option("--slots", o->batch, "sequences decoded together");
  auto* prompt_len = cmd->add_option("--prompt-len", o->prompt, "prompt tokens per sequence");
  auto* max_new = cmd->add_option("--max-new", o->generate, "generated tokens per sequence");
  option_renamed(*cmd, c, "--batch", slots, o->batch);
  option_renamed(*cmd, c, "--prompt", prompt_len, o->prompt);
  option_renamed(*cmd, c, "--new", max_new, o->generate);
  cmd->add_option("--threads", o->threads, "threads (default: all cores)");
  cmd->add_flag("--profile", o->profile, "time per part of the whole evaluation");
  c.add(cmd, [o] { return bench_eval(*o), 0; });
}

}  // namespace moelab
