#pragma once
// Merging low-rank adapters into the weights they ride on (docs/methods.md §3.11): per adapter
// slot and expert, W[out0 + o, i] += scale * (B A)[o, i], so that x W'^T = x W^T + scale (x A^T)
// B^T and the merged model, which has no adapters, computes the adapted model's function (to
// float rounding). The base tensors keep their names and shapes: the merged model is a plain
// model of the config without "lora".
#include <cstdint>

#include "model/config.hpp"
#include "model/model.hpp"

namespace moelab {

// The config of the merged model: the same, without adapters.
ModelConfig lora_merged_config(const ModelConfig& c);

// The adapter slots on a model's weights (0: nothing to merge).
int64_t lora_slot_count(const ModelParams& mp);

// to.params = from's base tensors with every adapter of `from` added into its weight. `to` must
// be built from lora_merged_config(from.cfg); its other buffers are left alone. The sum
// scale * B A is accumulated in double and added to each weight with one rounding.
template <typename T>
void lora_merge(const Model<T>& from, Model<T>& to);

}  // namespace moelab
