// moelab upcycle: a dense checkpoint as an MoE one that computes the same function at step 0.
#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "convert/upcycle.hpp"

namespace moelab {

namespace {

struct UpcycleCmdOptions {
  std::string checkpoint, out, delta = "none";
  UpcycleOptions o;
};

}  // namespace

void command_upcycle(CLI::App& app, Commands& c) {
  auto o = std::make_shared<UpcycleCmdOptions>();
  auto* cmd = app.add_subcommand(
      "upcycle", "a dense checkpoint as an MoE checkpoint (sparse or DeRS upcycling)");
  cmd->footer(
      "Every chosen layer's FFN becomes N experts that copy it (with --granularity G: N*G "
      "experts, each one of G slices of its hidden units, K*G chosen, a group's G router rows "
      "tied so they are chosen together), behind a new random router; the rest is copied. With "
      "--universal-ffn the FFN stays, always on, beside N routed copies (MoE-CT, fixed gate): "
      "out = 0.5 FFN + 0.5 MoE, the average and not Med-MoE's sum, so that step 0 computes the "
      "dense function. --delta stores the experts as the dense FFN plus a per-expert delta "
      "(DeRS) that starts at zero. Train on from it with [model] config = \"OUT/config.json\" "
      "and init_from = \"OUT\".");
  cmd->add_option("checkpoint", o->checkpoint, "dense checkpoint folder (RUN/step_N)")->required();
  cmd->add_option("--out", o->out, "new folder to write (must not exist)")->required();
  cmd->add_option("--experts", o->o.experts, "N: experts per upcycled layer (>= 2)")
      ->capture_default_str();
  cmd->add_option("--top-k", o->o.top_k, "K: experts chosen per token")->capture_default_str();
  cmd->add_option("--layers", o->o.layers,
                  "all, every-other (the odd layers 1,3,5..., every other block as in "
                  "MoE-LLaVA) or a list such as 1,3; the others stay dense")
      ->capture_default_str();
  cmd->add_option("--granularity", o->o.granularity,
                  "G: cut each FFN into G slices (fine-grained experts); divides "
                  "intermediate_size")
      ->capture_default_str();
  cmd->add_flag("--universal-ffn", o->o.universal_ffn,
                "keep the FFN beside the experts: out = 0.5 FFN + 0.5 MoE");
  cmd->add_option("--delta", o->delta,
                  "none, sparse:P (DeRS: values at (1-P) of each matrix's positions) or "
                  "lowrank:R (DeRS: B A of rank R)")
      ->capture_default_str();
  cmd->add_option("--seed", o->o.seed, "seed of the router's rows and the sparse positions")
      ->capture_default_str();
  c.add(cmd, [o] {
    o->o.ders = upcycle_parse_delta(o->delta);
    upcycle_write(o->checkpoint, o->o, o->out);
    return 0;
  });
}

}  // namespace moelab
