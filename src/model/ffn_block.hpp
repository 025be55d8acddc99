#pragma once
// The feed-forward block: x_out = x + FFN(rmsnorm(x)), where FFN is dense (one expert, no
// routing at all) or a dropless mixture of experts (route top-k, sort the (token, slot) rows by
// expert, one GEMM per expert on contiguous rows, weighted combine; docs/methods.md §3.5-3.7).
// Training and decoding run this same code.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "backend/device.hpp"
#include "model/buffers.hpp"
#include "model/config.hpp"
#include "model/params.hpp"
#include "model/weight.hpp"

namespace moelab {

struct CtParams;

struct FfnParams {
  int64_t layer = 0;
  std::shared_ptr<const ModelConfig> cfg;  // the layer's (ModelConfig::layer_config)
  FfnKind kind = FfnKind::Dense;           // what it computes (ffn_kind)
  FfnKind mix = FfnKind::Dense;            // what the layer's own FFN computes: Dense or Moe
  int64_t ln = -1;                         // post_attention_layernorm [d]
  Weight router;                           // [E, d] and bias; w = -1 without a router
  int64_t balance = -1;                // router.balance_bias [E], frozen (router_balance; else -1)
  Weight up;                           // per expert [d, 2I] (gate and linear interleaved) and bias
  Weight down;                         // per expert [I, d] and bias
  std::shared_ptr<const CtParams> ct;  // MoE-CT: the new experts and the gate (else null)
};

// MoE-CT's part of a layer (model/moe_ct.cpp): N new experts with their router, and the gate.
struct CtParams {
  ModelConfig cfg;    // the layer's config with E = N and top-k of the new experts
  FfnParams experts;  // router and experts under "mlp.ct."
  CtGate gate = CtGate::Token;
  double lambda = 0.5;
  bool copy = true;
  int64_t scalar = -1;  // the scalar gate's a [1]
  Weight token;         // the token gate: z = u w^T + b, a = sigmoid(z); [1, d] and [1]
};

// The kind of FFN layer l of a config computes: the one place it is decided.
FfnKind ffn_kind(const ModelConfig& c, int64_t layer);

FfnParams ffn_register(ParamLayout& p, const ModelConfig& c, int64_t l);
// Router (optional) and experts of config c under the prefix `pre` ("model.layers.L.mlp."):
// full matrices, or with DeRS a shared base and per-expert deltas.
void ffn_register_experts(FfnParams& f, ParamLayout& p, const ModelConfig& c,
                          const std::string& pre, bool router);
// The fixed random positions of the layer's sparse deltas (DeRS-SM), into the int32 store.
void ffn_init_positions(const FfnParams& f, std::span<int32_t> index, uint64_t seed);
// Adapters and MoE-CT parts come after every base tensor (so the base keeps its place and its
// initial values).
void ffn_register_lora(FfnParams& f, ParamLayout& p, const ModelConfig& c);
void ffn_register_ct(FfnParams& f, ParamLayout& p, const ModelConfig& c);
// The router's balance bias (router_balance, routed layers only): after everything else, so that
// no other tensor moves or changes its initial value; frozen, zero at the start.
void ffn_register_balance(FfnParams& f, ParamLayout& p, const ModelConfig& c);

// The balance bias update after an optimizer step (methods.md §3.7.1): with load_e = counts_e /
// sum(counts), bias_e += rate * sign(1/E - load_e). bias, counts [E].
template <typename T>
void balance_update(const Ops<T>& op, std::span<T> bias, std::span<const int64_t> counts,
                    double rate);

template <typename T>
class FfnBlock {
 public:
  FfnBlock(const ModelConfig& c, FfnParams p);

  struct Acts {                  // kept for backward, one per layer; R = N*k rows
    Buffer<T> rstd;              // [N]
    Buffer<T> xn;                // [N,d]   normed input
    Buffer<T> rlogits;           // [N,E]   router logits       (MoE)
    Buffer<int32_t> idx;         // [N,k]   chosen experts      (MoE)
    Buffer<T> w;                 // [N,k]   routing weights     (MoE)
    Buffer<int32_t> order, pos;  // [R]                         (MoE)
    Buffer<int64_t> offsets;     // [E+1]                       (MoE)
    Buffer<T> xe;                // [R,d]   inputs sorted by expert (MoE)
    Buffer<T> h;                 // [R,2I]  gate_up outputs
    Buffer<T> a;                 // [R,I]   swiglu outputs
    Buffer<T> y;                 // [R,d]   expert outputs      (MoE)
    Buffer<T> up_xa, down_xa;    // [R,rank] adapters' scale * x A^T (with LoRA)
    // MoE-CT
    std::unique_ptr<Acts> ct;  // the new experts'
    Buffer<T> F, M;            // [N,d] the layer's FFN and the new experts' outputs
    Buffer<T> gate;            // [N] a per token (the fixed gate: [1])
    // Every buffer above, once (ct counts its own): bytes() is computed from this list.
    auto buffers() const {
      return std::tie(rstd, xn, rlogits, idx, w, order, pos, offsets, xe, h, a, y, up_xa, down_xa,
                      F, M, gate);
    }
    int64_t bytes() const;
  };
  struct Work {     // scratch shared by every layer
    Buffer<T> tmp;  // [N,d]  the FFN's output
    Buffer<T> dxn;  // [N,d]
    Buffer<T> drl;  // [N,E]  (MoE)
    Buffer<T> dw;   // [N,k]  (MoE)
    Buffer<T> dy;   // [R,d]  (MoE)
    Buffer<T> da;   // [R,I]
    Buffer<T> dh;   // [R,2I]
    Buffer<T> dxe;  // [R,d]  (MoE)
    Buffer<T> dxa;  // [R,rank]
    // MoE-CT
    std::unique_ptr<Work> ct;
    Buffer<T> dF, dM;  // [N,d]
    Buffer<T> dgate;   // [N] d(a), then d(z) of the token gate
    Buffer<T> dgu;     // [N,d] the token gate's d(u)
    // Every buffer above, once (ct counts its own): bytes() is computed from this list.
    auto buffers() const {
      return std::tie(tmp, dxn, drl, dw, dy, da, dh, dxe, dxa, dF, dM, dgate, dgu);
    }
    int64_t bytes() const;
  };
  void reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const;

  // x_out [N,d] = x + FFN(x); x_out may be x. Returns the router losses (zero when dense).
  kernels::RouterLosses forward(const Ctx<T>& c, Acts& a, Work& w, const T* x, T* x_out,
                                int64_t N) const;
  // dx [N,d]: d(x_out) on entry, d(x) on return.
  void backward(const Ctx<T>& c, const Acts& a, Work& w, const T* x, T* dx, int64_t N) const;

  // FFN(u) alone, without the norm and the residual: out [N,d] (dense or routed).
  kernels::RouterLosses mix_forward(const Ctx<T>& c, Acts& a, Work& w, const T* u, T* out,
                                    int64_t N) const;
  // du [N,d] = d(u) (=) from dout [N,d].
  void mix_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* u, const T* dout, T* du,
                    int64_t N) const;
  // MoE-CT: the new experts start as copies of the layer's FFN, the gate at lambda; for the
  // tensors `fresh` says were not loaded.
  void ct_derive(std::span<T> P, const ParamLayout& layout,
                 const std::function<bool(const std::string&)>& fresh) const;

  const FfnParams& params() const { return p_; }
  // Share of the N*k assignments per expert in the last forward of a (1 when dense).
  std::vector<double> load(const Acts& a) const;
  // counts [E] += the assignments per expert in the last forward of a (routed layers only).
  void counts_add(const Acts& a, std::span<int64_t> counts) const;

 private:
  // MoE-CT (model/moe_ct.cpp): out = (1 - a) F + a M of the layer's FFN F and the new experts M.
  kernels::RouterLosses ct_forward(const Ctx<T>& c, Acts& a, Work& w, const T* u, T* out,
                                   int64_t N) const;
  void ct_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* u, const T* dout, T* du,
                   int64_t N) const;
  void ct_reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const;

  struct ExpertRows {
    int64_t e, r0, n;
  };
  std::vector<ExpertRows> expert_rows(const Acts& a, int64_t R) const;
  bool grouped(const Weight& w) const;
  kernels::MoeRouting routing(const Acts& a, int64_t N) const;
  void experts_forward(const Ctx<T>& c, Acts& a, const T* xin, T* yout, int64_t R) const;
  void experts_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* xin, T* dxin, const T* dy,
                        int64_t R) const;

  const ModelConfig* c_;
  FfnParams p_;
  std::shared_ptr<const FfnBlock> ct_;  // MoE-CT: the new experts, a routed FFN of their own
};

}  // namespace moelab
