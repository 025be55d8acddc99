#pragma once
// The gpt-oss-style transformer: an embedding, L layers of (attention block, FFN block), a final
// norm and the LM head; forward and backward call the blocks in order and in reverse (no
// autograd). Dense (E = 1) and MoE take the same path; with E = 1 there is no routing at all, so
// a one-expert MoE is bit-for-bit the dense model. Each block registers its own tensors,
// owns its activations' shapes and its forward/backward pair (attention_block, ffn_block).
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "backend/device.hpp"
#include "model/attention_block.hpp"
#include "model/buffers.hpp"
#include "model/config.hpp"
#include "model/ffn_block.hpp"
#include "model/params.hpp"

namespace moelab {

struct Losses {
  double lm = 0;   // mean next-token cross-entropy over valid targets
  double aux = 0;  // load-balancing loss, mean over MoE layers (0 when E = 1)
  double z = 0;    // router z-loss, mean over MoE layers (0 when E = 1)
  std::vector<kernels::RouterLosses> layers;  // [L] each layer's router losses (0 when dense)
  double total() const { return lm + aux + z; }
};

// Where every block's tensors sit: built by the blocks' registration, in Hugging Face order,
// adapters last (so that adding them changes no base tensor's place or initial value).
struct ModelParams {
  int64_t embed = -1, norm = -1, lm_head = -1;  // lm_head == embed when tied
  std::vector<AttentionParams> attn;
  std::vector<FfnParams> ffn;
};
ModelParams model_register(ParamLayout& p, const ModelConfig& c);

template <typename T>
class Model {
 public:
  Model(const ModelConfig& cfg, int64_t batch, int64_t seq, Device& dev = device_default());

  // Random weights from the seed, then init_derived for every tensor.
  void init_weights(uint64_t seed);
  // Tensors whose start is derived from others (MoE-CT's new experts copy their layer's FFN, its
  // gate starts at lambda), for the tensors `fresh` names: after loading a base checkpoint, those
  // the checkpoint did not hold.
  void init_derived(const std::function<bool(const std::string&)>& fresh);
  // tokens, targets [B*T]; a target < 0 is ignored. Saves what backward needs.
  Losses forward(std::span<const int32_t> tokens, std::span<const int32_t> targets);
  // d(total loss)/d(params) accumulated into grads (call zero_grad first). Frozen tensors get
  // no gradient. Overwrites the logits buffer with its gradient.
  void backward();
  // Called by backward as soon as layer l's gradients are complete (l = L-1 down to 0), and
  // with -1 at the end, when the rest (embedding, head, final norm) are: a data-parallel
  // trainer starts summing each layer's gradients over its ranks while the others are computed.
  std::function<void(int64_t layer)> on_grads_ready;
  // Zeroes the gradients and the routing counts (a new optimizer step begins); lays the
  // gradients out for the layout's frozen set first (grad_sync).
  void zero_grad();
  // Sizes `grads` to the trainable tensors of the layout as it is now (zeroed when the frozen
  // set changed, untouched otherwise). zero_grad and backward call it; call it after freezing
  // before taking a view of `grads` that must stay valid.
  void grad_sync();
  // Tensor t's gradient (empty when t is frozen).
  std::span<const T> grad_of(const TensorView& t) const;
  // router_balance (methods.md §3.7.1): each routed layer's balance bias moved by the loads of
  // every forward since zero_grad. Nothing without router_balance.
  void balance_update();

  std::span<const T> logits() const { return act_.logits.span(); }  // [B*T, V] after forward
  std::span<T> view(const TensorView& t) { return {params.data() + t.offset, size_t(t.numel)}; }
  // Per MoE layer and expert: the share of the B*T*k assignments of the last forward.
  std::vector<std::vector<double>> expert_load() const;
  // Per layer: the assignments per expert of every forward since zero_grad ([E] when routed,
  // empty when dense).
  const std::vector<std::vector<int64_t>>& route_counts() const { return counts_; }
  // The same, to be summed over the ranks of a data-parallel step before balance_update.
  std::vector<std::vector<int64_t>>& route_counts() { return counts_; }
  // Bytes of activations, scratch and tables (RoPE, a rebuilt DeRS expert) held for the current
  // shape: every buffer the model holds on its device (test_memory checks it against the device).
  int64_t activation_bytes() const;

  // The blocks, for code that runs them with other buffers (the KV-cache decoder).
  const std::vector<AttentionBlock<T>>& attention_blocks() const { return attn_; }
  const std::vector<FfnBlock<T>>& ffn_blocks() const { return ffn_; }
  const ModelParams& blocks() const { return mp_; }
  Device& device() const { return *dev_; }
  // The block context over this model's parameters (and gradients, for training).
  Ctx<T> ctx(bool with_grads);
  // The same without gradients, rebuilding DeRS experts into `wbuf` [rebuild_size()].
  Ctx<T> ctx_infer(T* wbuf) const;
  // Elements of the largest expert matrix a DeRS delta rebuilds (0 without one).
  int64_t rebuild_size() const;

  ModelConfig cfg;
  ParamLayout layout;
  std::vector<T> params;       // [layout.total]
  PackedLayout grad_layout;    // where `grads` holds each trainable tensor
  std::vector<T> grads;        // [grad_layout.total] the trainable tensors' gradients, packed
  std::vector<int32_t> index;  // [layout.total_i32] DeRS sparse positions
  std::vector<int8_t> codes;   // [layout.total_i8]  DeRS quantized codes
  int64_t B, Tq;               // batch, sequence length
  int64_t N;                   // B * Tq tokens

 private:
  struct Acts {
    std::vector<typename AttentionBlock<T>::Acts> attn;  // per layer
    std::vector<typename FfnBlock<T>::Acts> ffn;         // per layer
    Buffer<T> stream;  // [2L+1, N, d] the residual stream: input, after each block
    Buffer<T> rstd_f;  // [N]
    Buffer<T> xn_f;    // [N,d]
    Buffer<T> logits;  // [N,V]
    Buffer<T> lse;     // [N]
    Buffer<T> dres;    // [N,d] d(residual stream), backward
    Buffer<T> dxn;     // [N,d]
    std::vector<int32_t> tokens, targets;  // [N]
    int64_t n_valid = 0;
    // Every buffer above, once (the blocks count their own).
    auto buffers() const { return std::tie(stream, rstd_f, xn_f, logits, lse, dres, dxn); }
  };
  T* stream(int64_t i) { return act_.stream.data() + i * N * cfg.hidden_size; }

  Device* dev_;
  ModelParams mp_;
  std::vector<AttentionBlock<T>> attn_;
  std::vector<FfnBlock<T>> ffn_;
  Acts act_;
  typename AttentionBlock<T>::Work attn_work_;
  typename FfnBlock<T>::Work ffn_work_;
  Buffer<T> rope_cos_, rope_sin_;  // [T, hd/2]
  Buffer<T> wbuf_, gbuf_;          // [rebuild_size()] a rebuilt DeRS expert and its gradient
  std::vector<std::vector<int64_t>> counts_;  // [L][E] routing counts since zero_grad
  // Every buffer of the model outside its blocks, once: activation_bytes() counts this list.
  auto buffers() const {
    return std::tuple_cat(act_.buffers(), std::tie(rope_cos_, rope_sin_, wbuf_, gbuf_));
  }
  bool have_forward_ = false;
};

}  // namespace moelab
