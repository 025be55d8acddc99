// moelab entities build, moelab eval.
#include <fmt/format.h>
#include <omp.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;

// ----------------------------------------------------------------------------
// entities build

void command_entities_build(CLI::App& entities, Commands& c) {
  auto o = std::make_shared<EntityBuildOptions>();
  auto* cmd = entities.add_subcommand("build", "entity set C and evaluation windows from A and B");
  cmd->add_option("--data", o->data_dir, "prepared data directory")->required();
  cmd->add_option("--entities", o->entities, "entity list (titles dump, plain, name<TAB>TYPE)")
      ->required();
  cmd->add_option("--out", o->out, "evaluation set file (JSON lines)")->required();
  cmd->add_option("--subset-a", o->subset_a, "the subset learned first");
  cmd->add_option("--subset-b", o->subset_b, "the subset trained on next");
  cmd->add_option("--top", o->top_a, "C: top percent by frequency in A");
  cmd->add_option("--bottom", o->bottom_b, "C: bottom percent by frequency in B");
  auto* prompt_len = cmd->add_option("--prompt-len", o->prompt, "prompt tokens");
  option_renamed(*cmd, c, "--prompt", prompt_len, o->prompt);
  cmd->add_option("--target", o->target, "continuation tokens");
  cmd->add_option("--max-samples", o->max_samples, "samples in total");
  cmd->add_option("--max-per-entity", o->max_per_entity, "samples per entity");
  cmd->add_option("--seed", o->seed, "sampling seed");
  c.add(cmd, [o] { return entities_build(*o), 0; });
}

// ----------------------------------------------------------------------------
// eval

namespace {

struct EvalOptions {
  std::string checkpoint, evalset, data, out;
  int64_t batch = 64;
  int threads = 0;
};

// M_in, M_ex, M(f), PPL_ent (and per entity type) of a checkpoint on an evaluation set; prints a
// table and writes JSON.
void eval_cmd(const EvalOptions& o) {
  if (o.batch < 1) fail(fmt::format("eval: --batch must be positive (not {})", o.batch));
  threads_set(o.threads > 0 ? o.threads : omp_get_num_procs());
  const std::string config_path = (fs::path(o.checkpoint) / "config.json").string();
  const ModelConfig cfg = config_load(config_path);
  const DataDir data = data_open(o.data);
  // A vocabulary padded beyond the tokenizer's is fine (evaluation decodes only the tokenizer's
  // ids); a smaller one cannot embed the data, as in training.
  if (cfg.vocab_size < data.vocab_size)
    fail(fmt::format("{}: vocab_size {} is smaller than the vocabulary of {}'s tokenizer ({})",
                     config_path, cfg.vocab_size, o.data, data.vocab_size));
  // the whole set is validated before the weights are read
  const EvalSet set = evalset_load(o.evalset, data.fingerprint,
                                   {.tokenizer_vocab = data.vocab_size,
                                    .model_vocab = cfg.vocab_size,
                                    .max_positions = cfg.max_position_embeddings});
  Model<float> model(cfg, 1, 1);
  checkpoint_check_tokenizer(o.checkpoint, checkpoint_load(o.checkpoint, model, nullptr),
                             data.fingerprint, o.data);
  const double t0 = time_now_s();
  const EvalReport r = evaluate(model, *data.tokenizer, set, o.batch);
  const double dt = time_now_s() - t0;
  auto row = [](const std::string& name, const EvalMetrics& m) {
    fmt::print("{:<6} {:>8} {:>8.4f} {:>8.4f} {:>8.4f} {:>10.3f}\n", name, m.samples, m.m_in,
               m.m_ex, m.m_f, m.ppl_ent);
  };
  fmt::print("{:<6} {:>8} {:>8} {:>8} {:>8} {:>10}\n", "type", "samples", "M_in", "M_ex", "M(f)",
             "PPL_ent");
  row("all", r.all);
  for (const auto& [type, m] : r.per_type) row(type, m);
  fmt::print("{} samples in {:.2f} s\n", set.samples.size(), dt);
  if (!o.out.empty()) {
    nlohmann::ordered_json all = evalreport_json(r);
    nlohmann::ordered_json out = {{"checkpoint", o.checkpoint}, {"evalset", o.evalset}};
    if (all.contains("per_type")) {
      out["per_type"] = all["per_type"];
      all.erase("per_type");
    }
    out["all"] = all;
    out["seconds"] = dt;
    file_write_atomic(o.out, out.dump(2) + "\n");
  }
}

}  // namespace

void command_eval(CLI::App& app, Commands& c) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand("eval", "M_in, M_ex, M(f), PPL_ent of a checkpoint");
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--evalset", o->evalset, "evaluation set from moelab entities build")->required();
  cmd->add_option("--data", o->data, "data directory (its tokenizer decodes)")->required();
  cmd->add_option("--out", o->out, "write the metrics as JSON");
  cmd->add_option("--batch", o->batch, "samples decoded together");
  cmd->add_option("--threads", o->threads, "threads (default: all cores)");
  c.add(cmd, [o] { return eval_cmd(*o), 0; });
}

}  // namespace moelab
