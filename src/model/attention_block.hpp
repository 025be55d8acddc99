#pragma once
// The attention block: x_out = x + o_proj(attention(rope(qkv_proj(rmsnorm(x))))), grouped-query
// with sinks and optional sliding window (docs/methods.md §3.2-3.4). Training and the KV-cache
// decoder run this same code; the decoder passes a cache.
#include <cstdint>
#include <tuple>

#include "backend/device.hpp"
#include "model/buffers.hpp"
#include "model/config.hpp"
#include "model/params.hpp"
#include "model/weight.hpp"

namespace moelab {

// The rows of one block call: B sequences of n positions each, the first at position t0.
struct Rows {
  int64_t B = 0, n = 0, t0 = 0;
  // With a cache: sequence b's position when n = 1 (null: t0 for every sequence), and the cache
  // slot it lives in (null: slot b), for a server whose sequences come and go at any position.
  const int64_t* pos = nullptr;
  const int64_t* slot = nullptr;
  int64_t N() const { return B * n; }
  int64_t position(int64_t b) const { return pos ? pos[b] : t0; }
  int64_t slot_of(int64_t b) const { return slot ? slot[b] : b; }
};

// One layer's keys and values for decoding, positions [0, L) of each sequence.
template <typename T>
struct KvCache {
  Buffer<T> K;  // [B, KV, hd, L] keys, transposed: scores accumulate along positions
  Buffer<T> V;  // [B, L, KV*hd]
  int64_t L = 0;
};

struct AttentionParams {
  int64_t layer = 0;
  int64_t ln = -1;     // input_layernorm [d]
  int64_t sinks = -1;  // [H], -1 without sinks
  Weight qkv;          // q|k|v fused: [(H+2KV)*hd, d] and bias, one GEMM
  Weight o;            // [d, H*hd]
};

// Registers layer l's attention tensors; adapters come in a second pass (attention_register_lora)
// after every base tensor, so that a model with adapters keeps the base tensors' order and
// initial values.
AttentionParams attention_register(ParamLayout& p, const ModelConfig& c, int64_t l);
void attention_register_lora(AttentionParams& a, ParamLayout& p, const ModelConfig& c);

template <typename T>
class AttentionBlock {
 public:
  AttentionBlock(const ModelConfig& c, AttentionParams p) : c_(&c), p_(std::move(p)) {}

  struct Acts {        // kept for backward, one per layer
    Buffer<T> rstd;    // [N]
    Buffer<T> xn;      // [N,d]        normed input
    Buffer<T> qkv;     // [N,(H+2KV)*hd] after RoPE
    Buffer<T> att;     // [N,H*hd]     attention output before o_proj
    Buffer<T> lse;     // [N,H]
    Buffer<T> qkv_xa;  // [N,rank]     adapters' scale * x A^T (with LoRA)
    Buffer<T> o_xa;    // [N,rank]
    // Every buffer above, once: bytes() is computed from this list.
    auto buffers() const { return std::tie(rstd, xn, qkv, att, lse, qkv_xa, o_xa); }
    int64_t bytes() const;
  };
  struct Work {      // scratch shared by every layer
    Buffer<T> tmp;   // [N,d] o_proj output
    Buffer<T> dxn;   // [N,d]
    Buffer<T> dqkv;  // [N,(H+2KV)*hd]
    Buffer<T> datt;  // [N,H*hd]
    Buffer<T> dxa;   // [N,rank]
    // Every buffer above, once: bytes() is computed from this list.
    auto buffers() const { return std::tie(tmp, dxn, dqkv, datt, dxa); }
    int64_t bytes() const;
  };
  // Sizes the buffers for N rows (grows only); the backward scratch only when `backward`.
  void reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const;

  // x_out [N,d] = x + attention(x); x_out may be x. cos/sin: the RoPE tables from position 0.
  // With a cache, the rows' keys and values are stored in it, and n = 1 attends over the cache.
  void forward(const Ctx<T>& c, Acts& a, Work& w, const T* x, T* x_out, Rows r, const T* cos,
               const T* sin, KvCache<T>* cache) const;
  // dx [N,d]: d(x_out) on entry, d(x) on return; x the forward's input.
  void backward(const Ctx<T>& c, const Acts& a, Work& w, const T* x, T* dx, Rows r, const T* cos,
                const T* sin) const;

  const AttentionParams& params() const { return p_; }

 private:
  kernels::AttnShape shape(Rows r) const;
  void cache_store(const Ops<T>& op, KvCache<T>& kv, const T* qkv, Rows r) const;

  const ModelConfig* c_;
  AttentionParams p_;
};

}  // namespace moelab
