// moelab: the command line. Each command group registers its subcommands, their options and
// the action each runs once parsed; main parses and runs the one that was given.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "cli/bench.hpp"
#include "cli/data_cmds.hpp"
#include "cli/eval_cmds.hpp"
#include "cli/model_cmds.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/signals.hpp"
#include "eval/evalset.hpp"
#include "study/report.hpp"
#include "study/run.hpp"
#include "train/trainer.hpp"

namespace moelab {
namespace {

// A parsed subcommand and what it runs (its exit status).
struct Commands {
  std::vector<std::pair<CLI::App*, std::function<int()>>> list;
  void add(CLI::App* cmd, std::function<int()> run) { list.emplace_back(cmd, std::move(run)); }
};

// Options live as long as the action that reads them.
template <typename T>
std::shared_ptr<T> options() {
  return std::make_shared<T>();
}

// ---- moelab model
void model_commands(CLI::App& app, Commands& c) {
  auto* model = app.add_subcommand("model", "inspect model configs");
  model->require_subcommand(1);
  auto info = options<ModelInfoOptions>();
  auto* info_cmd = model->add_subcommand("info", "parameter and FLOPs accounting of a config");
  info_cmd->add_option("config", info->config, "model config JSON")->required();
  info_cmd->add_option("--iso-moe", info->iso_moe,
                       "E,K: the iso-total-parameter MoE variant with E experts, top-K");
  info_cmd->add_option("--seq", info->seq, "context length for FLOPs (default: max positions)");
  info_cmd->add_option("--out", info->out, "write the (derived) config JSON to this file");
  info_cmd->add_flag("--json", info->json, "print one JSON object");
  c.add(info_cmd, [info] { return model_info(*info), 0; });
  auto dump = options<ModelDumpOptions>();
  auto* dump_cmd = model->add_subcommand(
      "dump", "one forward/backward on fixed data, all tensors to safetensors");
  dump_cmd->add_option("config", dump->config, "model config JSON")->required();
  dump_cmd->add_option("--out", dump->out, "output .safetensors")->required();
  dump_cmd->add_option("--dtype", dump->dtype, "f32 or f64");
  dump_cmd->add_option("--batch", dump->batch, "batch size");
  dump_cmd->add_option("--seq", dump->seq, "sequence length");
  dump_cmd->add_option("--seed", dump->seed, "seed for weights and data");
  dump_cmd->add_option("--freeze", dump->freeze, "regex of tensor names to freeze");
  c.add(dump_cmd, [dump] { return model_dump(*dump), 0; });
}

// ---- moelab data
void data_commands(CLI::App& app, Commands& c) {
  auto* data = app.add_subcommand("data", "corpora to token shards and subsets");
  data->require_subcommand(1);
  auto prep = options<DataPrepareOptions>();
  auto* prep_cmd = data->add_subcommand("prepare", "encode sources into a data directory");
  prep_cmd->add_option("spec", prep->spec, "data spec JSON (tokenizer, sources, subsets)");
  prep_cmd->add_option("--preset", prep->preset,
                       "fetch and convert package data into the cache, then prepare: default");
  prep_cmd->add_option("--out", prep->out, "output data directory")->required();
  prep_cmd->add_option("--threads", prep->threads, "encoding threads (default: all cores)");
  c.add(prep_cmd, [prep] { return data_prepare_cmd(*prep), 0; });
  auto inspect_dir = options<std::string>();
  auto* inspect_cmd = data->add_subcommand("inspect", "summary of a data directory");
  inspect_cmd->add_option("dir", *inspect_dir, "data directory")->required();
  c.add(inspect_cmd, [inspect_dir] { return data_inspect(*inspect_dir), 0; });
  auto verify_dir = options<std::string>();
  auto* verify_cmd =
      data->add_subcommand("verify", "check every shard: header, size, checksum, token ids");
  verify_cmd->add_option("dir", *verify_dir, "data directory")->required();
  c.add(verify_cmd, [verify_dir] { return data_verify(*verify_dir); });
}

// ---- moelab entities, moelab eval
void eval_commands(CLI::App& app, Commands& c) {
  auto* ent = app.add_subcommand("entities", "entity evaluation sets");
  ent->require_subcommand(1);
  auto eb = options<EntityBuildOptions>();
  auto* build = ent->add_subcommand("build", "entity set C and evaluation windows from A and B");
  build->add_option("--data", eb->data_dir, "prepared data directory")->required();
  build->add_option("--entities", eb->entities, "entity list (titles dump, plain, name<TAB>TYPE)")
      ->required();
  build->add_option("--out", eb->out, "evaluation set file (JSON lines)")->required();
  build->add_option("--subset-a", eb->subset_a, "the subset learned first");
  build->add_option("--subset-b", eb->subset_b, "the subset trained on next");
  build->add_option("--top", eb->top_a, "C: top percent by frequency in A");
  build->add_option("--bottom", eb->bottom_b, "C: bottom percent by frequency in B");
  build->add_option("--prompt", eb->prompt, "prompt tokens");
  build->add_option("--target", eb->target, "continuation tokens");
  build->add_option("--max-samples", eb->max_samples, "samples in total");
  build->add_option("--max-per-entity", eb->max_per_entity, "samples per entity");
  build->add_option("--seed", eb->seed, "sampling seed");
  c.add(build, [eb] { return entities_build(*eb), 0; });

  auto ev = options<EvalOptions>();
  auto* eval = app.add_subcommand("eval", "M_in, M_ex, M(f), PPL_ent of a checkpoint");
  eval->add_option("checkpoint", ev->checkpoint, "checkpoint folder (RUN/step_N)")->required();
  eval->add_option("--evalset", ev->evalset, "evaluation set from moelab entities build")
      ->required();
  eval->add_option("--data", ev->data, "data directory (its tokenizer decodes)")->required();
  eval->add_option("--out", ev->out, "write the metrics as JSON");
  eval->add_option("--batch", ev->batch, "samples decoded together");
  eval->add_option("--threads", ev->threads, "threads (default: all cores)");
  c.add(eval, [ev] { return eval_cmd(*ev), 0; });
}

// ---- moelab train, moelab run, moelab report
struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  bool resume = false, no_report = false;
  StudyOptions study;
};

void train_commands(CLI::App& app, Commands& c) {
  auto tr = options<TrainArgs>();
  auto* train = app.add_subcommand("train", "a run: phases, checkpoints, metrics");
  train->add_option("config", tr->config, "experiment TOML")->required();
  train->add_option("--set", tr->sets, "override a key: section.key=value (repeatable)");
  train->add_flag("--resume", tr->resume, "continue from the run's last checkpoint");
  c.add(train, [tr] {
    const StopScope stop;  // already while the experiment is read (train_run holds its own)
    return train_run(experiment_load(tr->config, tr->sets), tr->resume);
  });

  auto st = options<TrainArgs>();
  auto* study = app.add_subcommand(
      "run", "the forgetting study: dense and iso-total MoE variants, A then B, and the report");
  study->add_option("config", st->config, "experiment TOML with a [study] section")->required();
  study->add_option("--set", st->sets, "override a key: section.key=value (repeatable)");
  study->add_option("--seeds", st->study.seeds, "seeds, e.g. 1,2,3 (default: [study] seeds)")
      ->delimiter(',');
  study->add_option("--experts", st->study.experts, "expert counts, e.g. 1,8 (default: [study])")
      ->delimiter(',');
  study->add_flag("--no-report", st->no_report, "train only");
  c.add(study, [st] {
    st->study.report = !st->no_report;
    return study_run(experiment_load(st->config, st->sets), st->study);
  });

  auto ro = options<ReportOptions>();
  auto no_plots = options<bool>();
  auto* report = app.add_subcommand("report", "figures and a summary of runs or studies");
  report->add_option("dirs", ro->dirs, "study folders or run folders")->required();
  report->add_option("--out", ro->out, "output folder (default: FIRST/report)");
  report->add_flag("--no-plots", *no_plots, "write the gnuplot scripts without running them");
  c.add(report, [ro, no_plots] {
    ro->plots = !*no_plots;
    std::printf("%s\n", report_write(*ro).c_str());
    return 0;
  });
}

// ---- moelab bench
void bench_commands(CLI::App& app, Commands& c) {
  auto* bench = app.add_subcommand("bench", "measure speed");
  bench->require_subcommand(1);
  auto peak_threads = options<int>();
  auto* peak = bench->add_subcommand("peak", "measured fp32 FMA peak (GFLOP/s)");
  peak->add_option("--threads", *peak_threads, "threads (default: all cores)");
  c.add(peak, [peak_threads] {
    const int t = *peak_threads > 0 ? *peak_threads : threads_get();
    std::printf("{\"threads\": %d, \"fma_peak_gflops\": %.1f}\n", t, bench_fma_peak_gflops(t, 1.0));
    return 0;
  });
  auto bt = options<BenchTrainOptions>();
  auto* train = bench->add_subcommand("train", "training tokens/s, MFU and peak memory");
  train->add_option("--config", bt->config, "bench JSON (model, batch_size, seq_len)")->required();
  train->add_option("--steps", bt->steps, "timed steps");
  train->add_option("--warmup", bt->warmup, "untimed steps first");
  train->add_option("--threads", bt->threads, "threads (default: all cores)");
  train->add_option("--peak", bt->peak_gflops, "FMA peak in GFLOP/s (default: measure)");
  train->add_flag("--profile", bt->profile, "per-op time breakdown (stderr and JSON)");
  train->add_flag("--bf16", bt->bf16, "linear layers in bf16 with fp32 accumulation");
  c.add(train, [bt] { return bench_train(*bt), 0; });
  auto be = options<BenchEvalOptions>();
  auto* eval = bench->add_subcommand("eval", "greedy decoding throughput (KV cache)");
  eval->add_option("--config", be->config, "bench or model JSON")->required();
  eval->add_option("--samples", be->samples, "sequences to decode");
  eval->add_option("--batch", be->batch, "sequences decoded together");
  eval->add_option("--prompt", be->prompt, "prompt tokens per sequence");
  eval->add_option("--new", be->generate, "generated tokens per sequence");
  eval->add_option("--threads", be->threads, "threads (default: all cores)");
  eval->add_flag("--profile", be->profile, "time per part of the whole evaluation");
  c.add(eval, [be] { return bench_eval(*be), 0; });
}

}  // namespace
}  // namespace moelab

int main(int argc, char** argv) {
  using namespace moelab;
  signals_init();  // before any thread exists: see core/signals.hpp
  CLI::App app{"moelab: a laboratory for Mixture-of-Experts language models"};
  app.require_subcommand(1);
  Commands commands;
  for (auto* group : {model_commands, data_commands, eval_commands, train_commands, bench_commands})
    group(app, commands);
  try {
    app.parse(argc, argv);
    for (const auto& [cmd, run] : commands.list)
      if (cmd->parsed()) return run();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
