// moelab export gguf, moelab import gguf: checkpoints to and from llama.cpp's gpt-oss GGUF files
// (convert/gguf.hpp, docs/gguf.md).
#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <string>

#include "cli/commands.hpp"

#include "convert/gguf.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace {

std::string types_text(const std::map<std::string, int64_t>& types) {
  std::string s;
  for (const auto& [t, n] : types) {
    s += fmt::format("{}{} {}", s.empty() ? "" : ", ", n, t);
  }
  return s;
}

int export_gguf(GgufExportOptions& o) {
  if (o.data.empty()) {
    o.data = checkpoint_run_data_dir(o.checkpoint);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const GgufExportReport r = gguf_export(o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(
      "exported {} -> {} (llama.cpp gpt-oss GGUF, {}): {} tensors ({}), {:.2f} MB, {:.2f} s\n",
      o.checkpoint, o.out, o.dtype, r.tensors, types_text(r.types), double(r.bytes) / 1e6, s);
  if (!r.merged.empty()) {
    fmt::print("merged: {}\n", r.merged.dump());
  }
  fmt::print("tokenizer: {}\n", r.tokenizer);
  if (!o.reference.empty()) {
    fmt::print("reference: {}\n", o.reference);
  }
  return 0;
}

}  // namespace

void command_export_gguf(CLI::App& exp, Commands& c) {
  auto o = std::make_shared<GgufExportOptions>();
  auto* cmd = exp.add_subcommand(
      "gguf", "a checkpoint's model as a GGUF file that llama.cpp (gpt-oss) runs");
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--out", o->out, "new .gguf file to write (must not exist)")->required();
  cmd->add_option("--dtype", o->dtype,
                  "f32 (exact), f16, bf16 or q8_0 for the weight matrices (norms, biases, sinks "
                  "and routers stay f32)")
      ->capture_default_str();
  cmd->add_option("--data", o->data,
                  "data folder whose tokenizer to embed (default: the run's experiment's)");
  cmd->add_option("--prompts", o->prompts, "file of prompts, one per line, for --reference");
  cmd->add_option("--reference", o->reference,
                  "also write moelab's token ids and log-probs for --prompts to this JSON file");
  c.add(cmd, [o] { return export_gguf(*o); });
}

void command_import_gguf(CLI::App& imp, Commands& c) {
  auto file = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto* cmd =
      imp.add_subcommand("gguf", "a GGUF file written by moelab export gguf as a checkpoint");
  cmd->add_option("file", *file, "the .gguf file")->required();
  cmd->add_option("--out", *out, "new checkpoint folder to write (must not exist)")->required();
  c.add(cmd, [file, out] {
    const GgufImportReport r = gguf_import(*file, *out);
    fmt::print("imported {} -> {}: {} tensors ({}), {} layers, {} expert(s), top-{}\n", *file, *out,
               r.tensors, types_text(r.types), r.config.num_hidden_layers,
               r.config.num_local_experts, r.config.num_experts_per_tok);
    return 0;
  });
}

}  // namespace moelab
