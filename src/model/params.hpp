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

// Integer tensors (DeRS: a sparse delta's positions, int32; a quantized delta's codes, int8) live
// in their own stores beside the float parameters: never trained, never in the optimizer.
struct IntTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // into the int32 or the int8 store
  int64_t numel = 0;
  int bits = 32;      // 32: int32 store; 8: int8 store
  int64_t bound = 0;  // int32: every value in [0, bound); int8: the codes' bit width
};

// The model's tensors in registration order. Blocks register their own tensors (add) and keep
// the offsets; nothing here knows what a layer is made of.
struct ParamLayout {
  std::vector<TensorView> tensors;
  int64_t total = 0;
  std::vector<IntTensor> ints;
  int64_t total_i32 = 0, total_i8 = 0;

  // Appends a tensor of this shape; returns its offset in the flat buffer.
  int64_t add(std::string name, std::vector<int64_t> shape, Init init, bool decay);

  // Appends an integer tensor to the int32 (bits 32) or int8 (bits 8) store; returns its offset.
  int64_t add_int(std::string name, std::vector<int64_t> shape, int bits, int64_t bound);

  const TensorView* find(std::string_view name) const;
  const IntTensor* find_int(std::string_view name) const;
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
