// moelab model info, moelab model dump, moelab export.
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.hpp"

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/rng.hpp"
#include "core/safetensors.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace {

// ----------------------------------------------------------------------------
// info

struct ModelInfoOptions {
  std::string config;
  std::string iso_moe;  // "E,K" or empty
  std::string out;      // write the (derived) config JSON here
  int64_t seq = 0;      // context for FLOPs; 0 = max_position_embeddings
  bool json = false;
};

std::string human(double x) {
  if (x >= 1e12) return fmt::format("{:.3f}T", x / 1e12);
  if (x >= 1e9) return fmt::format("{:.3f}B", x / 1e9);
  if (x >= 1e6) return fmt::format("{:.3f}M", x / 1e6);
  if (x >= 1e3) return fmt::format("{:.1f}K", x / 1e3);
  return fmt::format("{:.0f}", x);
}

std::pair<int64_t, int64_t> parse_iso(const std::string& s) {
  int64_t E = 0, K = 0;
  char comma = 0;
  if (std::sscanf(s.c_str(), "%ld%c%ld", &E, &comma, &K) != 3 || comma != ',')
    fail(fmt::format("--iso-moe '{}': expected E,K (e.g. 8,2)", s));
  return {E, K};
}

void model_info(const ModelInfoOptions& o) {
  ModelConfig c = config_load(o.config);
  const ModelConfig base = c;
  if (!o.iso_moe.empty()) {
    auto [E, K] = parse_iso(o.iso_moe);
    c = config_iso_moe(c, E, K);
  }
  const int64_t seq = o.seq > 0 ? o.seq : c.max_position_embeddings;
  const ParamCounts p = config_count(c);
  const FlopCounts f = config_flops(c, seq);
  if (!o.out.empty()) {
    std::ofstream w(o.out);
    w << config_to_json(c).dump(2) << "\n";
    if (!w) fail(o.out + ": cannot write");
  }
  if (o.json) {
    nlohmann::ordered_json j = {{"config", config_to_json(c)},
                                {"params_total", p.total},
                                {"params_active", p.active},
                                {"params_embedding", p.embedding},
                                {"params_unembedding", p.unembedding},
                                {"params_attention", p.attention},
                                {"params_router", p.router},
                                {"params_experts", p.experts},
                                {"params_norms", p.norms},
                                {"seq_len", seq},
                                {"train_flops_per_token", f.train_per_token},
                                {"spec52_flops_per_token", f.spec52_per_token},
                                {"six_n_active", f.six_na}};
    if (!o.iso_moe.empty()) j["params_total_dense"] = config_count(base).total;
    std::cout << j.dump() << std::endl;
    return;
  }
  std::string sliding;
  for (size_t l = 0; l < c.layer_sliding.size(); l++)
    if (c.layer_sliding[l]) {
      if (!sliding.empty()) sliding += ',';
      sliding += std::to_string(l);
    }
  fmt::print("config        {}{}\n", o.config,
             o.iso_moe.empty() ? "" : fmt::format(" -> iso-total MoE {}", o.iso_moe));
  fmt::print("shape         d {}, {} layers, heads {} (kv {}) x {}, vocab {}\n", c.hidden_size,
             c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
             c.vocab_size);
  fmt::print("ffn           {}, {} expert(s), top-{}, hidden {} per expert (total width {})\n",
             c.is_moe() ? "moe" : "dense", c.num_local_experts, c.num_experts_per_tok,
             c.intermediate_size, c.intermediate_size * c.num_local_experts);
  fmt::print("attention     sinks {}, bias {}, sliding window {} on layers [{}]\n",
             c.attention_sinks ? "on" : "off", c.attention_bias ? "on" : "off", c.sliding_window,
             sliding);
  fmt::print("rope          theta {}, yarn factor {}\n", c.rope_theta, c.yarn_factor);
  fmt::print("params total  {} ({})\n", p.total, human(double(p.total)));
  fmt::print("  embedding {}, unembedding {}, attention {}, router {}, experts {}, norms {}\n",
             p.embedding, p.unembedding, p.attention, p.router, p.experts, p.norms);
  fmt::print("params active {} ({}) per token (no input embedding, {} of {} experts)\n", p.active,
             human(double(p.active)), c.num_experts_per_tok, c.num_local_experts);
  if (!o.iso_moe.empty()) {
    const int64_t dt = config_count(base).total;
    fmt::print("vs dense      total {} -> {} ({:+} from the router and expert biases)\n", dt,
               p.total, p.total - dt);
  }
  fmt::print("train FLOPs/token at seq {}: {} (exact causal), {} (App. C), {} (6 N_active)\n", seq,
             human(f.train_per_token), human(f.spec52_per_token), human(f.six_na));
}

}  // namespace

void command_model_info(CLI::App& model, Commands& c) {
  auto o = std::make_shared<ModelInfoOptions>();
  auto* cmd = model.add_subcommand("info", "parameter and FLOPs accounting of a config");
  cmd->add_option("config", o->config, "model config JSON")->required();
  cmd->add_option("--iso-moe", o->iso_moe,
                  "E,K: the iso-total-parameter MoE variant with E experts, top-K");
  auto* ctx = cmd->add_option("--ctx", o->seq, "context length for FLOPs (default: max positions)");
  option_renamed(*cmd, c, "--seq", ctx, o->seq);
  cmd->add_option("--out", o->out, "write the (derived) config JSON to this file");
  cmd->add_flag("--json", o->json, "print one JSON object");
  c.add(cmd, [o] { return model_info(*o), 0; });
}

// ----------------------------------------------------------------------------
// dump

namespace {

struct ModelDumpOptions {
  std::string config, out, dtype = "f32", freeze;
  int64_t batch = 2, seq = 16;
  uint64_t seed = 1;
};

template <typename T>
void dump_impl(const ModelDumpOptions& o, const ModelConfig& c) {
  Model<T> m(c, o.batch, o.seq);
  m.init_weights(o.seed);
  // Perturb the zero/one-initialised tensors too, so every parameter's role is tested.
  for (size_t ti = 0; ti < m.layout.tensors.size(); ti++) {
    const TensorView& t = m.layout.tensors[ti];
    if (t.init == Init::Normal || t.init == Init::NormalScaled) continue;
    for (int64_t i = 0; i < t.numel; i++)
      m.params[size_t(t.offset + i)] += T(0.1 * rng_normal(o.seed + 1, ti, uint64_t(i)));
  }
  if (!o.freeze.empty()) m.layout.set_frozen(o.freeze, true);
  const int64_t N = o.batch * o.seq;
  std::vector<int32_t> tokens(static_cast<size_t>(N)), targets(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; i++) {
    tokens[size_t(i)] = int32_t(rng_u64(o.seed, 100, uint64_t(i)) % uint64_t(c.vocab_size));
    targets[size_t(i)] =
        (i % 7 == 3) ? -1 : int32_t(rng_u64(o.seed, 101, uint64_t(i)) % uint64_t(c.vocab_size));
  }
  m.zero_grad();
  const Losses l = m.forward(tokens, targets);
  std::vector<T> logits(m.logits().begin(), m.logits().end());
  m.backward();
  std::vector<double> losses = {l.lm, l.aux, l.z};
  std::vector<TensorRef> refs;
  int64_t widest = 0;
  for (const TensorView& t : m.layout.tensors) widest = std::max(widest, t.numel);
  const std::vector<T> zeros(size_t(widest), T(0));  // [widest] a frozen tensor's gradient
  for (const TensorView& t : m.layout.tensors) {
    refs.push_back(
        tensor_ref<T>(t.name, std::span<const T>(m.params.data() + t.offset, t.numel), t.shape));
    const std::span<const T> g = m.grad_of(t);  // empty when frozen: zeros are written
    refs.push_back(tensor_ref<T>("grad:" + t.name,
                                 g.empty() ? std::span<const T>(zeros.data(), t.numel) : g,
                                 t.shape));
  }
  refs.push_back(tensor_ref<int32_t>("input.tokens", tokens, {o.batch, o.seq}));
  refs.push_back(tensor_ref<int32_t>("input.targets", targets, {o.batch, o.seq}));
  refs.push_back(tensor_ref<T>("output.logits", logits, {o.batch, o.seq, c.vocab_size}));
  refs.push_back(tensor_ref<double>("output.losses", losses, {3}));
  safetensors_write(o.out, refs, {{"config", config_to_json(c).dump()}});
}

// One forward/backward on deterministic data; writes weights, inputs, logits, losses and every
// parameter gradient to a safetensors file (for the PyTorch parity test and for inspection).
void model_dump(const ModelDumpOptions& o) {
  const ModelConfig c = config_load(o.config);
  if (o.dtype == "f32")
    dump_impl<float>(o, c);
  else if (o.dtype == "f64")
    dump_impl<double>(o, c);
  else
    fail("--dtype must be f32 or f64");
}

}  // namespace

void command_model_dump(CLI::App& model, Commands& c) {
  auto o = std::make_shared<ModelDumpOptions>();
  auto* cmd = model.add_subcommand(
      "dump", "one forward/backward on fixed data, all tensors to safetensors");
  cmd->add_option("config", o->config, "model config JSON")->required();
  cmd->add_option("--out", o->out, "output .safetensors")->required();
  cmd->add_option("--dtype", o->dtype, "f32 or f64");
  cmd->add_option("--batch", o->batch, "batch size");
  auto* ctx = cmd->add_option("--ctx", o->seq, "sequence length (positions per sequence)");
  option_renamed(*cmd, c, "--seq", ctx, o->seq);
  cmd->add_option("--seed", o->seed, "seed for weights and data");
  cmd->add_option("--freeze", o->freeze, "regex of tensor names to freeze");
  c.add(cmd, [o] { return model_dump(*o), 0; });
}

// ----------------------------------------------------------------------------
// export

namespace {

namespace fs = std::filesystem;

struct ExportOptions {
  std::string checkpoint, out;
  bool merge_lora = false;
};

// A checkpoint's model alone, for evaluation and for starting runs (init_from), with its
// adapters merged into the weights on --merge-lora (docs/methods.md §3.11). Without it the
// weights are copied as they are, adapters included. The trainer state keeps what says where the
// weights came from (step, phase, seed, tokenizer); the data loaders' positions and the optimizer
// go, so the folder evaluates and initialises but does not resume.
void model_export(const ExportOptions& o) {
  const ModelConfig cfg = checkpoint_export_begin(o.checkpoint, o.out);
  Model<float> from(cfg, 1, 1);
  nlohmann::json state = checkpoint_load(o.checkpoint, from, nullptr);
  for (const char* key : {"loaders", "optimizer_step", "optimizer_moments"}) state.erase(key);
  state["exported_from"] = o.checkpoint;
  const int64_t slots = lora_slot_count(from.blocks());
  if (!o.merge_lora) {
    checkpoint_write_model(o.out, from, state);
    fmt::print("exported {} -> {}: {} tensors, {} LoRA adapters kept as they are\n", o.checkpoint,
               o.out, from.layout.tensors.size(), slots);
    return;
  }
  if (slots == 0)
    fail(
        fmt::format("{}: --merge-lora: the checkpoint has no LoRA adapters ({} has no 'lora', "
                    "or its targets match no weight)",
                    o.checkpoint, (fs::path(o.checkpoint) / "config.json").string()));
  Model<float> to(lora_merged_config(cfg), 1, 1);
  lora_merge(from, to);
  state["merged_lora"] = config_to_json(cfg)["lora"];
  checkpoint_write_model(o.out, to, state);
  fmt::print("exported {} -> {}: {} LoRA adapters (rank {}, scale {}) merged, {} tensors\n",
             o.checkpoint, o.out, slots, cfg.lora.rank, cfg.lora.scale(), to.layout.tensors.size());
}

}  // namespace

void command_export(CLI::App& app, Commands& c) {
  auto o = std::make_shared<ExportOptions>();
  auto* cmd = app.add_subcommand("export", "a checkpoint's model as a plain checkpoint folder");
  // Required unless the subcommand (export hf) is given: checked when export itself runs.
  cmd->add_option("checkpoint", o->checkpoint, "checkpoint folder (RUN/step_N) (required)");
  cmd->add_option("--out", o->out, "new folder to write (must not exist) (required)");
  cmd->add_flag("--merge-lora", o->merge_lora,
                "merge the LoRA adapters into their weights: a model without adapters");
  cmd->require_subcommand(0, 1);
  // Registered first: when `export hf` is parsed, its action runs, not this one.
  command_export_hf(*cmd, c);
  command_export_gguf(*cmd, c);
  c.add(cmd, [o] {
    if (o->checkpoint.empty()) throw CLI::RequiredError("checkpoint");
    if (o->out.empty()) throw CLI::RequiredError("--out");
    return model_export(*o), 0;
  });
}

}  // namespace moelab
