#pragma once
// DeRS compression (Huang et al. 2025, "Decompose, Replace, Synthesize"): a trained MoE's routed
// experts rewritten as one shared base per weight plus a light per-expert delta,
// W_e = W_base + delta_e. The base is the dense FFN the MoE was upcycled from (the paper's
// choice) or the mean of the layer's experts; delta_e = W_e - W_base (in double) is stored sparse
// (DARE random drop with rescale, or top-k by magnitude), k-bit per output channel, or as a
// truncated SVD. The result is an ordinary checkpoint folder whose config carries `ders`: it
// evaluates, and trains (init_from), like any other.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.hpp"
#include "model/model.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// options

struct CompressOptions {
  DersConfig ders;            // delta with p, topk, seed | bits | rank (alpha 0: scale 1)
  std::string base;           // "mean", or a dense checkpoint folder (ders.base "dense")
  bool select_given = false;  // --select or --seed was given (sparse only)
};

// "sparse:P", "quant:BITS" or "lowrank:R" as a DeRS config; one-line error naming --delta for
// bad syntax, P outside [0, 1), BITS outside 1..8 or R < 1.
DersConfig compress_parse_delta(std::string_view s);

// The config of the compressed model: `moe` with `ders`. Refuses (one line naming `source`) a
// model without routed experts, one already compressed, one with LoRA adapters, and a rank above
// min(in, out) of the expert matrices.
ModelConfig compress_config(const ModelConfig& moe, const DersConfig& ders,
                            std::string_view source);

// ----------------------------------------------------------------------------
// measured numbers

// One routed weight ([E, in, out], e.g. model.layers.0.mlp.experts.gate_up_proj), or the total.
struct CompressStats {
  std::string name;
  int64_t experts = 0, in = 0, out = 0;
  int64_t bytes_before = 0;  // E in out 4 (f32 experts)
  int64_t bytes_after = 0;   // base + values + indices + scales + packed codes + factors, as stored
  double paper_ratio = 0;    // the paper's count against the experts it replaces (see .cpp)
  double err_mean = 0, err_max = 0;                  // ||W_hat_e - W_e||_F / ||W_e||_F over experts
  double cos_base_mean = 0, cos_base_min = 0;        // cos(W_e, W_base) over experts
  double cos_experts_mean = 0, cos_experts_min = 0;  // cos(W_e, W_f) over pairs e < f
  int64_t pairs = 0;                                 // expert pairs measured
};

struct CompressReport {
  std::vector<CompressStats> weights;       // in layout order
  CompressStats total;                      // bytes summed, errors and cosines over all experts
  int64_t file_before = 0, file_after = 0;  // model.safetensors, bytes (compress_write)
};

nlohmann::ordered_json compress_report_json(const CompressReport& r);
std::string compress_table(const CompressReport& r);

// ----------------------------------------------------------------------------
// compression

// Each routed weight's base [in * out] by its name in the MoE. Empty: the experts' mean.
using CompressBases = std::map<std::string, std::vector<float>>;

// The dense FFN of every routed weight of `moe` from the dense checkpoint `dense_ckpt`: layer L's
// model.layers.L.mlp.experts.{gate_up,down}_proj [1, in, out], for MoE experts and for MoE-CT
// experts (model.layers.L.mlp.ct.experts.*) alike. A missing tensor or another shape is refused
// naming the tensor and both shapes.
CompressBases compress_dense_bases(const std::string& dense_ckpt, const Model<float>& moe);

// Fills `out` (built from compress_config(moe.cfg, ...)): every tensor the two share copied by
// name, and each routed weight's base and deltas. Returns the measured numbers (no file sizes).
CompressReport compress_model(const Model<float>& moe, const CompressBases& bases,
                              Model<float>& out);

// Loads the checkpoint `ckpt`, compresses it and writes the checkpoint folder `out` (refused if
// it exists; every refusal comes before anything is written) with OUT/compress.json, both into
// a hidden folder beside it that is renamed once whole (OUT has every file or is absent). The
// trainer state keeps the source's (tokenizer, seed, step) without loaders and optimizer, plus
// "compressed_from" and "compress" (the options).
CompressReport compress_write(const std::string& ckpt, const CompressOptions& o,
                              const std::string& out);

}  // namespace moelab
