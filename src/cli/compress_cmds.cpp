// moelab compress: a trained MoE's experts as a shared base plus light per-expert deltas (DeRS).
#include <fmt/format.h>
#include <omp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "convert/compress.hpp"
#include "core/error.hpp"
#include "core/threads.hpp"

namespace moelab {

namespace {

struct CompressCmdOptions {
  std::string checkpoint, out, delta, base, select = "random";
  uint64_t seed = 0;
  int threads = 0;
  CLI::Option *threads_opt = nullptr, *select_opt = nullptr, *seed_opt = nullptr;
};

int compress_run(const CompressCmdOptions& c) {
  CompressOptions o;
  o.ders = compress_parse_delta(c.delta);
  if (c.select != "random" && c.select != "topk")
    fail(fmt::format("--select '{}': expected random or topk", c.select));
  o.ders.topk = c.select == "topk";
  o.ders.seed = c.seed;
  o.base = c.base;
  o.select_given = c.select_opt->count() > 0 || c.seed_opt->count() > 0;
  // Without --threads, OpenMP's own default (the experts' SVDs run in parallel), as before.
  if (c.threads_opt->count() > 0) {
    threads_set(c.threads > 0 ? c.threads : omp_get_num_procs());
  }
  const CompressReport r = compress_write(c.checkpoint, o, c.out);
  fmt::print("compressed {} -> {} (--delta {}, --base {})\n", c.checkpoint, c.out, c.delta, c.base);
  fmt::print("{}", compress_table(r));
  fmt::print("measures in {}/compress.json\n", c.out);
  return 0;
}

}  // namespace

void command_compress(CLI::App& app, Commands& c) {
  auto o = std::make_shared<CompressCmdOptions>();
  auto* cmd = app.add_subcommand(
      "compress", "a trained MoE's experts as a shared base plus light deltas (DeRS)");
  cmd->footer(
      "DeRS (Huang et al. 2025): each routed weight's E experts become one base plus a "
      "per-expert delta_e = W_e - base, stored sparse (--delta sparse:P keeps round((1-P) in "
      "out) positions: --select random draws them uniformly and rescales by 1/(1-P) as DARE, "
      "topk keeps the largest |delta|), quantized per output channel (quant:BITS) or as a "
      "truncated SVD (lowrank:R, R <= min(in, out)). --base is required: a dense checkpoint "
      "(the FFN the MoE was upcycled from, the paper's choice; its layer FFN serves MoE-CT "
      "experts too) or the word mean (the mean of each weight's experts; write ./mean for a "
      "folder of that name). OUT is a checkpoint folder (evaluate it, or train on from it with "
      "[model] config = \"OUT/config.json\" and init_from = \"OUT\"), with OUT/compress.json: "
      "bytes before and after per weight (as stored, and the paper's count), the experts' "
      "relative reconstruction error, and cosines of the experts to the base and to each other.");
  cmd->add_option("checkpoint", o->checkpoint, "MoE checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--delta", o->delta, "sparse:P, quant:BITS or lowrank:R")->required();
  cmd->add_option("--out", o->out, "new folder to write (must not exist)")->required();
  cmd->add_option("--base", o->base, "mean, or the dense checkpoint folder the MoE came from")
      ->required();
  o->select_opt = cmd->add_option("--select", o->select,
                                  "sparse: random (default, DARE rescale) or topk (by magnitude)");
  o->seed_opt = cmd->add_option("--seed", o->seed, "sparse, random: the positions' seed (0)");
  o->threads_opt =
      cmd->add_option("--threads", o->threads,
                      "threads of the low-rank SVDs (default: OMP_NUM_THREADS, else all cores)");
  c.add(cmd, [o] { return compress_run(*o); });
}

}  // namespace moelab
