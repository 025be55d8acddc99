// moelab export hf, moelab import hf: checkpoints to and from Hugging Face GptOss folders
// (convert/hf.hpp, docs/hf.md).
#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <string>

#include "cli/commands.hpp"

#include "convert/hf.hpp"
#include "core/error.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace {

struct ExportHfOptions {
  HfExportOptions o;
  std::string dtype = "f32";
};

int export_hf(ExportHfOptions& e) {
  if (e.dtype != "f32" && e.dtype != "bf16")
    fail(fmt::format("--dtype {}: must be f32 or bf16", e.dtype));
  e.o.bf16 = e.dtype == "bf16";
  if (e.o.data.empty()) e.o.data = checkpoint_run_data_dir(e.o.checkpoint);
  const auto t0 = std::chrono::steady_clock::now();
  const HfExportReport r = hf_export(e.o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("exported {} -> {} (transformers GptOss, {}): {} tensors, {:.2f} MB, {:.2f} s\n",
             e.o.checkpoint, e.o.out, e.dtype, r.tensors, double(r.bytes) / 1e6, s);
  if (!r.merged.empty()) fmt::print("merged: {}\n", r.merged.dump());
  fmt::print("tokenizer: {}\n", r.tokenizer);
  if (!e.o.logits.empty()) fmt::print("logits: {}\n", e.o.logits);
  return 0;
}

}  // namespace

void command_export_hf(CLI::App& exp, Commands& c) {
  auto e = std::make_shared<ExportHfOptions>();
  auto* cmd = exp.add_subcommand(
      "hf", "a checkpoint's model as a Hugging Face folder that GptOssForCausalLM loads");
  cmd->add_option("checkpoint", e->o.checkpoint, "checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--out", e->o.out, "new folder to write (must not exist)")->required();
  cmd->add_option("--dtype", e->dtype, "f32 (exact) or bf16 (rounded to nearest even)");
  cmd->add_option("--data", e->o.data,
                  "data folder whose tokenizer to write (default: the run's experiment's)");
  cmd->add_option("--logits", e->o.logits,
                  "also write moelab's logits for fixed tokens to this safetensors file");
  c.add(cmd, [e] { return export_hf(*e); });
}

void command_import(CLI::App& app, Commands& c) {
  CLI::App& imp = command_group(app, "import", "models from other formats as checkpoints");
  auto dir = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto* cmd = imp.add_subcommand("hf", "a Hugging Face GptOss folder as a checkpoint folder");
  cmd->add_option("dir", *dir, "folder with config.json and model.safetensors")->required();
  cmd->add_option("--out", *out, "new checkpoint folder to write (must not exist)")->required();
  c.add(cmd, [dir, out] {
    const HfImportReport r = hf_import(*dir, *out);
    fmt::print("imported {} -> {}: {} tensors, {} layers, {} expert(s), top-{}\n", *dir, *out,
               r.tensors, r.config.num_hidden_layers, r.config.num_local_experts,
               r.config.num_experts_per_tok);
    return 0;
  });
  command_import_gguf(imp, c);
}

}  // namespace moelab
