#pragma once
#include <cstdint>
#include <string>

namespace moelab {

struct ModelInfoOptions {
  std::string config;
  std::string iso_moe;  // "E,K" or empty
  std::string out;      // write the (derived) config JSON here
  int64_t seq = 0;      // context for FLOPs; 0 = max_position_embeddings
  bool json = false;
};
void model_info(const ModelInfoOptions& o);

struct ModelDumpOptions {
  std::string config, out, dtype = "f32", freeze;
  int64_t batch = 2, seq = 16;
  uint64_t seed = 1;
};
// One forward/backward on deterministic data; writes weights, inputs, logits, losses and every
// parameter gradient to a safetensors file (for the PyTorch parity test and for inspection).
void model_dump(const ModelDumpOptions& o);

}  // namespace moelab
