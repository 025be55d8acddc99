// moelab: the command line.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

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

int main(int argc, char** argv) {
  using namespace moelab;
  signals_init();  // before any thread exists: see core/signals.hpp
  CLI::App app{"moelab: a laboratory for Mixture-of-Experts language models"};
  app.require_subcommand(1);

  // ---- moelab model
  auto* model = app.add_subcommand("model", "inspect model configs");
  model->require_subcommand(1);
  ModelInfoOptions info;
  auto* info_cmd = model->add_subcommand("info", "parameter and FLOPs accounting of a config");
  info_cmd->add_option("config", info.config, "model config JSON")->required();
  info_cmd->add_option("--iso-moe", info.iso_moe,
                       "E,K: the iso-total-parameter MoE variant with E experts, top-K");
  info_cmd->add_option("--seq", info.seq, "context length for FLOPs (default: max positions)");
  info_cmd->add_option("--out", info.out, "write the (derived) config JSON to this file");
  info_cmd->add_flag("--json", info.json, "print one JSON object");
  ModelDumpOptions dump;
  auto* dump_cmd = model->add_subcommand(
      "dump", "one forward/backward on fixed data, all tensors to safetensors");
  dump_cmd->add_option("config", dump.config, "model config JSON")->required();
  dump_cmd->add_option("--out", dump.out, "output .safetensors")->required();
  dump_cmd->add_option("--dtype", dump.dtype, "f32 or f64");
  dump_cmd->add_option("--batch", dump.batch, "batch size");
  dump_cmd->add_option("--seq", dump.seq, "sequence length");
  dump_cmd->add_option("--seed", dump.seed, "seed for weights and data");
  dump_cmd->add_option("--freeze", dump.freeze, "regex of tensor names to freeze");

  // ---- moelab data
  auto* data = app.add_subcommand("data", "corpora to token shards and subsets");
  data->require_subcommand(1);
  DataPrepareOptions prep;
  auto* prep_cmd = data->add_subcommand("prepare", "encode sources into a data directory");
  prep_cmd->add_option("spec", prep.spec, "data spec JSON (tokenizer, sources, subsets)");
  prep_cmd->add_option("--preset", prep.preset,
                       "fetch and convert package data into the cache, then prepare: default");
  prep_cmd->add_option("--out", prep.out, "output data directory")->required();
  prep_cmd->add_option("--threads", prep.threads, "encoding threads (default: all cores)");
  std::string inspect_dir;
  auto* inspect_cmd = data->add_subcommand("inspect", "summary of a data directory");
  inspect_cmd->add_option("dir", inspect_dir, "data directory")->required();
  std::string verify_dir;
  auto* verify_cmd =
      data->add_subcommand("verify", "check every shard: header, size, checksum, token ids");
  verify_cmd->add_option("dir", verify_dir, "data directory")->required();

  // ---- moelab entities
  auto* ent = app.add_subcommand("entities", "entity evaluation sets");
  ent->require_subcommand(1);
  EntityBuildOptions eb;
  auto* ent_build =
      ent->add_subcommand("build", "entity set C and evaluation windows from A and B");
  ent_build->add_option("--data", eb.data_dir, "prepared data directory")->required();
  ent_build
      ->add_option("--entities", eb.entities, "entity list (titles dump, plain, name<TAB>TYPE)")
      ->required();
  ent_build->add_option("--out", eb.out, "evaluation set file (JSON lines)")->required();
  ent_build->add_option("--subset-a", eb.subset_a, "the subset learned first");
  ent_build->add_option("--subset-b", eb.subset_b, "the subset trained on next");
  ent_build->add_option("--top", eb.top_a, "C: top percent by frequency in A");
  ent_build->add_option("--bottom", eb.bottom_b, "C: bottom percent by frequency in B");
  ent_build->add_option("--prompt", eb.prompt, "prompt tokens");
  ent_build->add_option("--target", eb.target, "continuation tokens");
  ent_build->add_option("--max-samples", eb.max_samples, "samples in total");
  ent_build->add_option("--max-per-entity", eb.max_per_entity, "samples per entity");
  ent_build->add_option("--seed", eb.seed, "sampling seed");

  // ---- moelab eval
  EvalOptions ev;
  auto* eval_cmd_ = app.add_subcommand("eval", "M_in, M_ex, M(f), PPL_ent of a checkpoint");
  eval_cmd_->add_option("checkpoint", ev.checkpoint, "checkpoint folder (RUN/step_N)")->required();
  eval_cmd_->add_option("--evalset", ev.evalset, "evaluation set from moelab entities build")
      ->required();
  eval_cmd_->add_option("--data", ev.data, "data directory (its tokenizer decodes)")->required();
  eval_cmd_->add_option("--out", ev.out, "write the metrics as JSON");
  eval_cmd_->add_option("--batch", ev.batch, "samples decoded together");
  eval_cmd_->add_option("--threads", ev.threads, "threads (default: all cores)");

  // ---- moelab train
  std::string train_config;
  std::vector<std::string> train_sets;
  bool train_resume = false;
  auto* train_run_cmd = app.add_subcommand("train", "a run: phases, checkpoints, metrics");
  train_run_cmd->add_option("config", train_config, "experiment TOML")->required();
  train_run_cmd->add_option("--set", train_sets, "override a key: section.key=value (repeatable)");
  train_run_cmd->add_flag("--resume", train_resume, "continue from the run's last checkpoint");

  // ---- moelab run, moelab report
  std::string study_config;
  std::vector<std::string> study_sets;
  StudyOptions so;
  bool no_report = false;
  auto* study_cmd = app.add_subcommand(
      "run", "the forgetting study: dense and iso-total MoE variants, A then B, and the report");
  study_cmd->add_option("config", study_config, "experiment TOML with a [study] section")
      ->required();
  study_cmd->add_option("--set", study_sets, "override a key: section.key=value (repeatable)");
  study_cmd->add_option("--seeds", so.seeds, "seeds, e.g. 1,2,3 (default: [study] seeds)")
      ->delimiter(',');
  study_cmd->add_option("--experts", so.experts, "expert counts, e.g. 1,8 (default: [study])")
      ->delimiter(',');
  study_cmd->add_flag("--no-report", no_report, "train only");
  ReportOptions ro;
  auto* report_cmd = app.add_subcommand("report", "figures and a summary of runs or studies");
  report_cmd->add_option("dirs", ro.dirs, "study folders or run folders")->required();
  report_cmd->add_option("--out", ro.out, "output folder (default: FIRST/report)");
  bool no_plots = false;
  report_cmd->add_flag("--no-plots", no_plots, "write the gnuplot scripts without running them");

  // ---- moelab bench
  auto* bench = app.add_subcommand("bench", "measure speed");
  bench->require_subcommand(1);
  int peak_threads = 0;
  auto* peak_cmd = bench->add_subcommand("peak", "measured fp32 FMA peak (GFLOP/s)");
  peak_cmd->add_option("--threads", peak_threads, "threads (default: all cores)");
  BenchTrainOptions bt;
  auto* train_cmd = bench->add_subcommand("train", "training tokens/s, MFU and peak memory");
  train_cmd->add_option("--config", bt.config, "bench JSON (model, batch_size, seq_len)")
      ->required();
  train_cmd->add_option("--steps", bt.steps, "timed steps");
  train_cmd->add_option("--warmup", bt.warmup, "untimed steps first");
  train_cmd->add_option("--threads", bt.threads, "threads (default: all cores)");
  train_cmd->add_option("--peak", bt.peak_gflops, "FMA peak in GFLOP/s (default: measure)");
  train_cmd->add_flag("--profile", bt.profile, "per-op time breakdown (stderr and JSON)");
  train_cmd->add_flag("--bf16", bt.bf16, "linear layers in bf16 with fp32 accumulation");

  BenchEvalOptions be;
  auto* eval_bench_cmd = bench->add_subcommand("eval", "greedy decoding throughput (KV cache)");
  eval_bench_cmd->add_option("--config", be.config, "bench or model JSON")->required();
  eval_bench_cmd->add_option("--samples", be.samples, "sequences to decode");
  eval_bench_cmd->add_option("--batch", be.batch, "sequences decoded together");
  eval_bench_cmd->add_option("--prompt", be.prompt, "prompt tokens per sequence");
  eval_bench_cmd->add_option("--new", be.generate, "generated tokens per sequence");
  eval_bench_cmd->add_option("--threads", be.threads, "threads (default: all cores)");
  eval_bench_cmd->add_flag("--profile", be.profile, "time per part of the whole evaluation");

  try {
    app.parse(argc, argv);
    if (info_cmd->parsed()) model_info(info);
    if (dump_cmd->parsed()) model_dump(dump);
    if (prep_cmd->parsed()) data_prepare_cmd(prep);
    if (ent_build->parsed()) entities_build(eb);
    if (eval_cmd_->parsed()) eval_cmd(ev);
    if (inspect_cmd->parsed()) data_inspect(inspect_dir);
    if (verify_cmd->parsed()) return data_verify(verify_dir);
    if (train_run_cmd->parsed())
      return train_run(experiment_load(train_config, train_sets), train_resume);
    if (study_cmd->parsed()) {
      so.report = !no_report;
      return study_run(experiment_load(study_config, study_sets), so);
    }
    if (report_cmd->parsed()) {
      ro.plots = !no_plots;
      std::printf("%s\n", report_write(ro).c_str());
    }
    if (peak_cmd->parsed()) {
      const int t = peak_threads > 0 ? peak_threads : threads_get();
      std::printf("{\"threads\": %d, \"fma_peak_gflops\": %.1f}\n", t,
                  bench_fma_peak_gflops(t, 1.0));
    }
    if (train_cmd->parsed()) bench_train(bt);
    if (eval_bench_cmd->parsed()) bench_eval(be);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
