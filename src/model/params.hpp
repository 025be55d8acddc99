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

// The model's tensors in registration order. Blocks register their own tensors (add) and keep
// the offsets; nothing here knows what a layer is made of.
struct ParamLayout {
  std::vector<TensorView> tensors;
  int64_t total = 0;

  // Appends a tensor of this shape; returns its offset in the flat buffer.
  int64_t add(std::string name, std::vector<int64_t> shape, Init init, bool decay);

  const TensorView* find(std::string_view name) const;
  // Freezes (or unfreezes) every tensor whose name matches the ECMAScript regex; returns the
  // number of tensors matched.
  int64_t set_frozen(const std::string& regex, bool frozen);
  // Every tensor inside [begin, begin + n) is frozen. Fused groups (q|k|v) compute their
  // gradient as one GEMM unless all members are frozen; the optimizer still skips the frozen.
  bool frozen_range(int64_t begin, int64_t n) const;
};

// The layout of a config's model: every block's tensors (model.cpp, model_register).
ParamLayout layout_build(const ModelConfig& c);

}  // namespace moelab
