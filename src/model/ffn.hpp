#pragma once
// The feed-forward block's forward pass, shared by the model (training) and the decoder
// (inference): dense (E = 1: no routing at all) or dropless MoE (route, sort by expert, one GEMM
// per expert on contiguous rows, weighted combine).
#include <cstdint>

#include "model/config.hpp"
#include "model/params.hpp"

namespace moelab {

template <typename T>
struct FfnBuffers {  // R = N * k rows
  T* h;              // [R, 2I] gate_up outputs
  T* a;              // [R, I]  swiglu outputs
  T* y;              // [R, d]  expert outputs        (E > 1)
  T* xe;             // [R, d]  sorted expert inputs  (E > 1)
  T* rlogits;        // [N, E]  router logits         (E > 1)
  T* w;              // [N, k]  routing weights       (E > 1)
  int32_t* idx;      // [N, k]                        (E > 1)
  int32_t* order;    // [R]                           (E > 1)
  int32_t* pos;      // [R]                           (E > 1)
  int64_t* offsets;  // [E + 1]                       (E > 1)
};

// out [N, d] = FFN(xn [N, d]) with the weights of layer `o` in the parameter buffer P.
template <typename T>
void ffn_forward(const ModelConfig& c, const T* P, const LayerOffsets& o, int64_t N, const T* xn,
                 T* out, const FfnBuffers<T>& b);

}  // namespace moelab
