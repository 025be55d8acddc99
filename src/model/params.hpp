#pragma once
// Parameter layout: every tensor is a named view (name, shape, offset) into one flat buffer.
// Gradients and optimizer moments live in the packed layout of the trainable tensors alone
// (PackedLayout), so a frozen tensor costs 4 bytes a parameter, not 16. Names follow Hugging
// Face GptOss.
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
};

// The trainable tensors packed in layout order, the frozen ones left out: where gradients and
// the optimizer's moments live ("packed space"). Two tensors adjacent in the layout and both
// trainable are adjacent here too, so a fused range (q|k|v) whose members all train is one
// range of the packed space as well.
struct PackedLayout {
  static constexpr int64_t kFrozen = -1;        // find: every tensor of the range is frozen
  static constexpr int64_t kPartlyFrozen = -2;  // find: some are (a fused range)
  std::vector<int64_t> at;                      // [tensors] packed offset; -1: frozen
  int64_t total = 0;                            // packed elements

  // Whether the layout's frozen set is still the one packed.
  bool current(const ParamLayout& p) const;
  // Packed offset of the parameters [begin, begin + n) (inside the layout's buffer), or
  // kFrozen / kPartlyFrozen.
  int64_t find(const ParamLayout& p, int64_t begin, int64_t n) const;
  // The trainable pieces of [begin, begin + n): `len` elements at `begin + skip` are packed at
  // `packed` (for a range find calls partly frozen).
  struct Piece {
    int64_t skip, packed, len;
  };
  std::vector<Piece> pieces(const ParamLayout& p, int64_t begin, int64_t n) const;
};

PackedLayout layout_pack(const ParamLayout& p);

// The layout of a config's model: every block's tensors (model.cpp, model_register).
ParamLayout layout_build(const ModelConfig& c);

}  // namespace moelab
