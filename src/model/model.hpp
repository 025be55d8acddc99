#pragma once
// The gpt-oss-style transformer: forward and backward by calling the kernels in order and in
// reverse (no autograd). Dense (E = 1) and MoE take the same path; with E = 1 there is no
// routing at all, so a one-expert MoE is bit-for-bit the dense model.
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/kernels.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace moelab {

struct Losses {
  double lm = 0;   // mean next-token cross-entropy over valid targets
  double aux = 0;  // load-balancing loss, mean over MoE layers (0 when E = 1)
  double z = 0;    // router z-loss, mean over MoE layers (0 when E = 1)
  double total() const { return lm + aux + z; }
};

template <typename T>
class Model {
 public:
  Model(const ModelConfig& cfg, int64_t batch, int64_t seq);

  void init_weights(uint64_t seed);
  // tokens, targets [B*T]; a target < 0 is ignored. Saves what backward needs.
  Losses forward(std::span<const int32_t> tokens, std::span<const int32_t> targets);
  // d(total loss)/d(params) accumulated into grads (call zero_grad first). Frozen tensors get
  // no gradient. Overwrites the logits buffer with its gradient.
  void backward();
  void zero_grad();

  std::span<const T> logits() const { return act_.logits; }  // [B*T, V] after forward
  std::span<T> view(const TensorView& t) { return {params.data() + t.offset, size_t(t.numel)}; }
  // Per MoE layer and expert: the share of the B*T*k assignments of the last forward.
  std::vector<std::vector<double>> expert_load() const;
  // Bytes of activations and scratch held for the current shape.
  int64_t activation_bytes() const;

  ModelConfig cfg;
  ParamLayout layout;
  std::vector<T> params;  // [layout.total]
  std::vector<T> grads;   // [layout.total]
  int64_t B, Tq;          // batch, sequence length
  int64_t N;              // B * Tq tokens

 private:
  struct LayerActs {
    std::vector<T> res;            // [N,d]   residual stream entering the layer
    std::vector<T> rstd1;          // [N]
    std::vector<T> xn1;            // [N,d]   attention norm output
    std::vector<T> qkv;            // [N,(H+2KV)*hd] after RoPE
    std::vector<T> att;            // [N,H*hd] attention output before o_proj
    std::vector<T> lse;            // [N,H]
    std::vector<T> mid;            // [N,d]   residual after attention
    std::vector<T> rstd2;          // [N]
    std::vector<T> xn2;            // [N,d]   MLP norm output
    std::vector<T> rlogits;        // [N,E]  router logits (E > 1)
    std::vector<int32_t> idx;      // [N,k]
    std::vector<T> w;              // [N,k]  routing weights
    std::vector<int32_t> order;    // [N*k]
    std::vector<int32_t> pos;      // [N*k]
    std::vector<int64_t> offsets;  // [E+1]
    std::vector<T> xe;             // [N*k,d]  expert inputs, sorted by expert (E > 1)
    std::vector<T> h;              // [N*k,2I] gate_up output
    std::vector<T> a;              // [N*k,I]  swiglu output
    std::vector<T> y;              // [N*k,d]  expert outputs
  };
  struct Acts {
    std::vector<LayerActs> layers;
    std::vector<T> res_final;              // [N,d]
    std::vector<T> rstd_f;                 // [N]
    std::vector<T> xn_f;                   // [N,d]
    std::vector<T> logits;                 // [N,V]
    std::vector<T> lse;                    // [N]
    std::vector<int32_t> tokens, targets;  // [N]
    int64_t n_valid = 0;
  };
  struct Scratch {        // reused by every layer in backward
    std::vector<T> dres;  // [N,d]
    std::vector<T> dxn;   // [N,d]
    std::vector<T> tmp;   // [N,d]
    std::vector<T> dqkv;  // [N,(H+2KV)*hd]
    std::vector<T> datt;  // [N,H*hd]
    std::vector<T> drl;   // [N,E]
    std::vector<T> dw;    // [N,k]
    std::vector<T> dy;    // [N*k,d]
    std::vector<T> da;    // [N*k,I]
    std::vector<T> dh;    // [N*k,2I]
    std::vector<T> dxe;   // [N*k,d]
  };

  kernels::AttnShape attn_shape(int64_t layer) const;
  kernels::MoeRouting routing(const LayerActs& a) const;
  T* grad_or_null(int64_t offset, int64_t n);
  void ffn_forward(int64_t l, LayerActs& a, T* out);
  void ffn_backward(int64_t l, LayerActs& a, const T* dout, T* dxn);

  Acts act_;
  Scratch s_;
  std::vector<T> rope_cos_, rope_sin_;  // [T, hd/2]
  bool have_forward_ = false;
};

}  // namespace moelab
