#pragma once
// The weight seam: every linear map of the model (attention projections, router, each expert's
// matrices, the head) is a Weight, and runs through weight_forward / weight_backward. A Weight
// says where its matrix and bias live in the flat parameter buffer, how they are laid out, how
// experts are strided, and what rides on them: low-rank adapters (docs/methods.md §3.11). A
// per-expert delta on a shared base (dense, sparse or low-rank) plugs in here as well.
#include <cstdint>
#include <string>
#include <vector>

#include "backend/device.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace moelab {

// A low-rank adapter on output columns [out0, out0 + out_n) of a linear map:
// y[:, out0:out0+out_n] += scale * (x A^T) B^T, A [rank, in], B [out_n, rank] (per expert when
// the weight has experts). B starts at zero, so an adapter leaves the map as it was.
struct LoraSlot {
  int64_t A = -1, B = -1;  // offsets
  int64_t rank = 0;
  double scale = 1;  // alpha / rank
  int64_t out0 = 0, out_n = 0;
  // expert e's A and B (offsets), for a map with `in` inputs
  int64_t A_at(int64_t e, int64_t in) const { return A + e * rank * in; }
  int64_t B_at(int64_t e) const { return B + e * out_n * rank; }
};

// DeRS (docs/methods.md §3.13): expert e's matrix is the shared base (Weight::w, one matrix for
// all experts) plus delta_e. A low-rank delta is a LoraSlot per expert; a sparse or quantized
// one is rebuilt into scratch when an expert has rows (or, sparse, added to x W^T directly when
// that is cheaper).
struct WeightDelta {
  DeltaKind kind = DeltaKind::None;
  int64_t nnz = 0;       // sparse: kept positions per expert
  int64_t values = -1;   // sparse: [E, nnz] parameters
  int64_t indices = -1;  // sparse: [E, nnz] flat positions in the [in, out] matrix (int32 store)
  int64_t codes = -1;    // quant: [E, in, out] (int8 store)
  int64_t scales = -1;   // quant: [E, out] parameters (frozen)
};

// How a sparse delta is applied (benchmarks force one; Auto picks by the cost model of
// weight_forward: direct when rows * nnz <= in * out).
enum class SparsePath { Auto, Rebuild, Direct };
inline SparsePath weight_sparse_path = SparsePath::Auto;

struct Weight {
  int64_t w = -1, b = -1;  // offsets of the matrix and of the bias (-1: no bias)
  int64_t in = 0, out = 0;
  kernels::WLayout layout = kernels::WLayout::OutIn;
  int64_t experts = 1;  // matrices, biases and adapters repeat per expert with these strides
  std::vector<LoraSlot> lora;
  bool shared = false;  // one matrix for every expert (the DeRS base)
  WeightDelta delta;

  int64_t lora_rank() const;  // sum of the slots' ranks: columns of the saved x A^T
  int64_t w_at(int64_t e) const { return shared ? w : w + e * in * out; }
  bool rebuilt() const;  // a sparse or quantized delta: expert matrices are rebuilt
};

// Registers the adapters a LoRA config asks for on a weight whose tensors are named `names` (one
// per output slice, e.g. q_proj, k_proj, v_proj of a fused projection, with their widths).
void weight_register_lora(Weight& w, ParamLayout& p, const LoraConfig& lc,
                          const std::vector<std::pair<std::string, int64_t>>& names);

// What weight_forward / weight_backward run against: the device, its ops, the parameter and
// gradient buffers and the layouts (frozen tensors get no gradient; G is packed: the trainable
// tensors' gradients alone, at their offsets in `packed`).
template <typename T>
struct Ctx {
  Device& dev;
  const Ops<T>& op;
  const T* P;
  T* G;  // [packed->total] null: no gradients (inference)
  const ParamLayout* layout;
  // DeRS: the integer stores, and scratch for one rebuilt expert matrix and its gradient
  // ([in * out] of the largest rebuilt weight each)
  const int32_t* I = nullptr;
  const int8_t* Q = nullptr;
  T* wbuf = nullptr;
  T* gbuf = nullptr;
  const PackedLayout* packed = nullptr;  // where G holds each trainable tensor (with G)
  // The gradient of parameters [offset, offset + n): null when absent or frozen. A range partly
  // frozen has no one pointer (weight_backward handles the fused ranges that can be).
  T* grad(int64_t offset, int64_t n) const;
};

// out [N, out] = x [N, in] W_e^T + b_e (+ adapters) for expert e; xa [N, lora_rank] saves
// scale * x A^T for backward (unused without adapters).
template <typename T>
void weight_forward(const Ctx<T>& c, const Weight& w, int64_t e, T* out, const T* x, int64_t N,
                    T* xa);
// dx [N, in] (= or += with dx_accumulate; null: skip), parameter gradients +=; dxa [N, rank]
// is scratch.
template <typename T>
void weight_backward(const Ctx<T>& c, const Weight& w, int64_t e, T* dx, const T* dout, const T* x,
                     int64_t N, const T* xa, T* dxa, bool dx_accumulate = false);

// out [in, out] (the InOut layout; [out, in] for OutIn) = expert e's whole matrix: the stored
// one, or a DeRS base plus its delta (low-rank adapters included at their scale). For
// measurements (cosine similarity to the base), not for the forward pass.
template <typename T>
void weight_expert_dense(const Ctx<T>& c, const Weight& w, int64_t e, T* out);

}  // namespace moelab
