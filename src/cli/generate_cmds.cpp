// moelab generate: text from a checkpoint, streamed as it is made.
#include <fmt/format.h>
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "cli/inference.hpp"
#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/threads.hpp"
#include "data/dataset.hpp"
#include "eval/generate.hpp"

namespace moelab {

namespace fs = std::filesystem;

namespace {

struct GenerateCmdOptions {
  std::string checkpoint, data, prompt, prompt_file;
  int threads = 0;
  GenerateOptions gen;
};

void generate_cmd(const GenerateCmdOptions& o) {
  // every flag is checked before anything is read
  generate_check(o.gen);
  if (o.prompt.empty() == o.prompt_file.empty())
    fail("generate: give one of --prompt TEXT or --prompt-file FILE");
  threads_set(o.threads > 0 ? o.threads : omp_get_num_procs());
  const std::string text = o.prompt_file.empty() ? o.prompt : file_read(o.prompt_file);
  const InferenceModel m = inference_load(o.checkpoint, o.data);
  // special tokens' names are their ids, as the server reads a text prompt
  const std::vector<int32_t> prompt = tokenizer_encode_text(*m.data.tokenizer, text);
  if (prompt.empty()) fail("generate: the prompt encodes to no tokens");
  const GenerateResult r =
      generate(*m.model, *m.data.tokenizer, prompt, o.gen, [](int32_t, std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
  // the server says so with finish_reason "length"; here on stderr, the text left clean
  const int64_t ctx = m.model->cfg.max_position_embeddings;
  if (r.reason == FinishReason::Length && int64_t(r.tokens.size()) < o.gen.max_new)
    fmt::print(stderr,
               "generate: stopped at the end of the model's context ({} positions) after {} new "
               "tokens (the prompt has {})\n",
               ctx, r.tokens.size(), prompt.size());
}

}  // namespace

void command_generate(CLI::App& app, Commands& c) {
  auto o = std::make_shared<GenerateCmdOptions>();
  auto* cmd = app.add_subcommand("generate", "text from a checkpoint, streamed to stdout");
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--data", o->data, "data directory the model was trained on (its tokenizer)")
      ->required();
  cmd->add_option("--prompt", o->prompt, "prompt text");
  cmd->add_option("--prompt-file", o->prompt_file, "file holding the prompt text");
  cmd->add_option("--max-new", o->gen.max_new, "new tokens at most")->capture_default_str();
  cmd->add_option("--temperature", o->gen.temperature, "softmax temperature (0: greedy)")
      ->capture_default_str();
  cmd->add_option("--top-p", o->gen.top_p, "nucleus probability mass, in (0, 1]")
      ->capture_default_str();
  cmd->add_option("--top-k", o->gen.top_k, "sample among the K most probable (0: all)")
      ->capture_default_str();
  cmd->add_option("--seed", o->gen.seed, "sampling seed")->capture_default_str();
  // one string per --stop, so that a checkpoint after it is not taken for a second one
  cmd->add_option("--stop", o->gen.stop, "stop where the text contains STRING (repeatable)")
      ->allow_extra_args(false);
  cmd->add_flag("--greedy", o->gen.greedy, "argmax at every step (as evaluation decodes)");
  cmd->add_option("--threads", o->threads, "threads (default: all cores)");
  c.add(cmd, [o] { return generate_cmd(*o), 0; });
}

}  // namespace moelab
