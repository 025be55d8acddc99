#pragma once
// Parameter layout: every tensor is a named view (name, shape, offset) into one flat buffer.
// Parameters, gradients and optimizer moments share the layout, so AdamW, clipping and
// checkpoint I/O work on flat buffers. Names follow Hugging Face GptOss.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.hpp"

namespace moelab {

enum class Init { Normal, NormalScaled, Zeros, Ones };

struct TensorView {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
  Init init = Init::Zeros;
  bool decay = false;   // weight decay applies (matrices yes; norms, biases, sinks no)
  bool frozen = false;  // no parameter gradient, skipped by the optimizer
};

// Offsets of one layer's tensors; -1 where the config has no such tensor.
struct LayerOffsets {
  int64_t ln1, qkv_w, qkv_b, o_w, o_b, sinks, ln2, router_w, router_b, w1, b1, w2, b2;
};

struct ParamLayout {
  std::vector<TensorView> tensors;
  std::vector<LayerOffsets> layers;
  int64_t embed = -1, norm = -1, lm_head = -1;  // lm_head == embed when tied
  int64_t total = 0;

  const TensorView* find(std::string_view name) const;
  // Freezes (or unfreezes) every tensor whose name matches the ECMAScript regex; returns the
  // number of tensors matched.
  int64_t set_frozen(const std::string& regex, bool frozen);
  // Every tensor inside [begin, begin + n) is frozen. Fused groups (q|k|v) compute their
  // gradient as one GEMM unless all members are frozen; the optimizer still skips the frozen.
  bool frozen_range(int64_t begin, int64_t n) const;
};

ParamLayout layout_build(const ModelConfig& c);

}  // namespace moelab
