#pragma once
// Upcycling: a dense checkpoint turned into an MoE one that computes the same
// function at step 0, to be trained on from there.
//
// - Sparse upcycling (Komatsuzaki et al. 2022): every chosen layer's FFN becomes N experts, each
//   a copy of it, behind a new random router; top-k routing weights sum to 1, so the layer
//   computes the dense FFN whatever the router says.
// - Fine-grained (granularity G > 1): the FFN's I hidden units are cut into G slices of I/G;
//   expert e is slice e mod G of the FFN, N*G experts in all, k*G chosen. The G experts of a
//   group get identical router rows, so they tie and are chosen together, each with weight w/G
//   (the router normalises over the selected experts); their down projections are scaled by G
//   and each keeps the whole down bias, so a group sums to w * FFN(u).
// - Universal FFN (--universal-ffn, as Med-MoE and MoE-CT): the dense FFN stays, always on, and
//   N copies go beside it as routed experts through MoE-CT with a fixed gate of 0.5:
//   out = 0.5 FFN(u) + 0.5 MoE(u). Med-MoE sums the two, which would double the FFN at step 0;
//   the average computes the dense function.
// - DeRS upcycling (Huang et al. 2025): the experts stored as one shared base (the dense FFN)
//   plus a per-expert delta that starts at zero: sparse (values at fixed random positions) or
//   low-rank (B A with B = 0).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.hpp"
#include "model/model.hpp"

namespace moelab {

struct UpcycleOptions {
  int64_t experts = 4;         // N: experts per MoE layer (before granularity)
  int64_t top_k = 1;           // K
  std::string layers = "all";  // "all", "every-other" (odd layers 1, 3, 5...) or "1,3"
  int64_t granularity = 1;     // G: slices of each FFN; N*G experts, K*G chosen
  bool universal_ffn = false;  // keep the dense FFN beside the experts (MoE-CT, fixed 0.5)
  DersConfig ders;             // delta None: full copies; Sparse or LowRank: DeRS upcycling
  uint64_t seed = 0;           // the router's random rows, the sparse delta's positions
};

// "none", "sparse:P" or "lowrank:R" as a DERS config (base "shared"); one-line error naming
// --delta otherwise.
DersConfig upcycle_parse_delta(std::string_view s);

// The layers --layers names for a model of L layers, ascending (all of them for "all").
std::vector<int64_t> upcycle_layers(const std::string& spec, int64_t L);

// The MoE config of a dense one. Refuses (one line) a source that is not dense, naming `source`,
// and bad options, naming the flag.
ModelConfig upcycle_config(const ModelConfig& dense, const UpcycleOptions& o,
                           std::string_view source);

// Fills `moe` (built from upcycle_config(dense.cfg, o)) from `dense`: init_weights(o.seed) for
// what is new (router rows, sparse positions, low-rank A), then every dense tensor of the same
// name and shape copied, and the chosen layers' experts made from their FFN.
template <typename T>
void upcycle_model(const Model<T>& dense, Model<T>& moe, const UpcycleOptions& o);

// Loads the checkpoint `ckpt`, upcycles it and writes the model-only checkpoint folder `out`
// (refused if it exists); the trainer state keeps the source's (tokenizer fingerprint, seed,
// step) and records "upcycled_from" and the options. Prints a summary.
void upcycle_write(const std::string& ckpt, const UpcycleOptions& o, const std::string& out);

}  // namespace moelab
