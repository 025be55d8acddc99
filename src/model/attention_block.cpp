#include "model/attention_block.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "core/profile.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// parameters

AttentionParams attention_register(ParamLayout& p, const ModelConfig& c, int64_t l) {
  const int64_t d = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
  const int64_t hd = c.head_dim, C = (H + 2 * KV) * hd;
  const std::string pre = fmt::format("model.layers.{}.", l);
  AttentionParams a;
  a.layer = l;
  a.ln = p.add(pre + "input_layernorm.weight", {d}, Init::Ones, false);
  // q, k and v weights (then biases) are adjacent: one [(H+2KV)*hd, d] matrix, one GEMM.
  a.qkv = {.in = d, .out = C};
  a.qkv.w = p.add(pre + "self_attn.q_proj.weight", {H * hd, d}, Init::Normal, true);
  p.add(pre + "self_attn.k_proj.weight", {KV * hd, d}, Init::Normal, true);
  p.add(pre + "self_attn.v_proj.weight", {KV * hd, d}, Init::Normal, true);
  if (c.attention_bias) {
    a.qkv.b = p.add(pre + "self_attn.q_proj.bias", {H * hd}, Init::Zeros, false);
    p.add(pre + "self_attn.k_proj.bias", {KV * hd}, Init::Zeros, false);
    p.add(pre + "self_attn.v_proj.bias", {KV * hd}, Init::Zeros, false);
  }
  a.o = {.in = H * hd, .out = d};
  a.o.w = p.add(pre + "self_attn.o_proj.weight", {d, H * hd}, Init::NormalScaled, true);
  if (c.attention_bias) a.o.b = p.add(pre + "self_attn.o_proj.bias", {d}, Init::Zeros, false);
  if (c.attention_sinks) a.sinks = p.add(pre + "self_attn.sinks", {H}, Init::Zeros, false);
  return a;
}

void attention_register_lora(AttentionParams& a, ParamLayout& p, const ModelConfig& c) {
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, hd = c.head_dim;
  const std::string pre = fmt::format("model.layers.{}.self_attn.", a.layer);
  weight_register_lora(a.qkv, p, c.lora,
                       {{pre + "q_proj.weight", H * hd},
                        {pre + "k_proj.weight", KV * hd},
                        {pre + "v_proj.weight", KV * hd}});
  weight_register_lora(a.o, p, c.lora, {{pre + "o_proj.weight", c.hidden_size}});
}

// ----------------------------------------------------------------------------
// buffers

template <typename T>
int64_t AttentionBlock<T>::Acts::bytes() const {
  static_assert(buffers_all_listed<Acts, decltype(buffers())>(0),
                "a buffer of AttentionBlock::Acts is missing from buffers()");
  return buffers_bytes(buffers());
}

template <typename T>
int64_t AttentionBlock<T>::Work::bytes() const {
  static_assert(buffers_all_listed<Work, decltype(buffers())>(0),
                "a buffer of AttentionBlock::Work is missing from buffers()");
  return buffers_bytes(buffers());
}

template <typename T>
void AttentionBlock<T>::reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const {
  const ModelConfig& c = *c_;
  const int64_t d = c.hidden_size, H = c.num_attention_heads, hd = c.head_dim;
  const int64_t C = p_.qkv.out, rq = p_.qkv.lora_rank(), ro = p_.o.lora_rank();
  a.rstd.grow(dev, N), a.xn.grow(dev, N * d), a.qkv.grow(dev, N * C);
  a.att.grow(dev, N * H * hd), a.lse.grow(dev, N * H);
  a.qkv_xa.grow(dev, N * rq), a.o_xa.grow(dev, N * ro);
  w.tmp.grow(dev, N * d);
  if (backward) {
    w.dxn.grow(dev, N * d), w.dqkv.grow(dev, N * C), w.datt.grow(dev, N * H * hd);
    w.dxa.grow(dev, N * std::max(rq, ro));
  }
}

template <typename T>
kernels::AttnShape AttentionBlock<T>::shape(Rows r) const {
  const ModelConfig& c = *c_;
  return {r.B,
          r.n,
          c.num_attention_heads,
          c.num_key_value_heads,
          c.head_dim,
          c.layer_sliding[size_t(p_.layer)] ? c.sliding_window : 0,
          1.0 / std::sqrt(double(c.head_dim))};
}

// ----------------------------------------------------------------------------
// forward

// The keys and values of rows [B*n] of qkv into their slots' cache at their positions: the keys
// as columns of the transposed store, the values as rows.
template <typename T>
void AttentionBlock<T>::cache_store(const Ops<T>& op, KvCache<T>& kv, const T* qkv, Rows r) const {
  const int64_t H = c_->num_attention_heads, KV = c_->num_key_value_heads, hd = c_->head_dim;
  const int64_t C = (H + 2 * KV) * hd, L = kv.L, m = r.B * r.n;
  const int64_t slots = kv.V.size() / (L * KV * hd);
  std::vector<int64_t> row_at(static_cast<size_t>(m)), k_at(static_cast<size_t>(m)),
      v_at(static_cast<size_t>(m));  // [B*n] each: a row's first element in qkv, K and V
  for (int64_t b = 0; b < r.B; b++) {
    const int64_t t0 = r.position(b), sb = r.slot_of(b);
    check(t0 >= 0 && t0 + r.n <= L && sb >= 0 && sb < slots,
          "attention: positions beyond the cache");
    for (int64_t t = 0; t < r.n; t++) {
      const size_t i = size_t(b * r.n + t);
      row_at[i] = int64_t(i) * C;
      k_at[i] = sb * KV * hd * L + t0 + t;
      v_at[i] = (sb * L + t0 + t) * KV * hd;
    }
  }
  op.rows_copy(kv.K.data(), k_at.data(), L, qkv + H * hd, row_at.data(), m, KV * hd);
  op.rows_copy(kv.V.data(), v_at.data(), 1, qkv + (H + KV) * hd, row_at.data(), m, KV * hd);
}

template <typename T>
void AttentionBlock<T>::forward(const Ctx<T>& c, Acts& a, Work& w, const T* x, T* x_out, Rows r,
                                const T* cos, const T* sin, KvCache<T>* cache) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, H = cf.num_attention_heads, KV = cf.num_key_value_heads;
  const int64_t hd = cf.head_dim, C = p_.qkv.out, N = r.N(), half = hd / 2;
  check(r.n == 1 || (r.t0 == 0 && !r.pos),
        "attention: several positions per sequence start at position 0");
  check(!(r.pos || r.slot) || cache, "attention: positions and slots are a cache's");
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "rmsnorm fwd");
    c.op.rmsnorm_forward(a.xn.data(), a.rstd.data(), x, c.P + p_.ln, N, d, cf.rms_norm_eps);
  }
  {
    ProfileScope ps(prof, "qkv proj fwd");
    weight_forward(c, p_.qkv, 0, a.qkv.data(), a.xn.data(), N, a.qkv_xa.data());
  }
  {  // row b*n + t is position t0 + t: the tables from t0 with period n
    ProfileScope ps(prof, "rope fwd");
    const T *cs = cos + r.t0 * half, *sn = sin + r.t0 * half;
    if (!r.pos) {
      c.op.rope_forward(a.qkv.data(), N, r.n, H, hd, C, cs, sn);
      c.op.rope_forward(a.qkv.data() + H * hd, N, r.n, KV, hd, C, cs, sn);
    } else {  // one row per sequence, each at its own position
      for (int64_t b = 0; b < r.B; b++) {
        T* q = a.qkv.data() + b * C;
        cs = cos + r.pos[b] * half, sn = sin + r.pos[b] * half;
        c.op.rope_forward(q, 1, 1, H, hd, C, cs, sn);
        c.op.rope_forward(q + H * hd, 1, 1, KV, hd, C, cs, sn);
      }
    }
  }
  {
    ProfileScope ps(prof, "attention fwd");
    const T* sinks = p_.sinks >= 0 ? c.P + p_.sinks : nullptr;
    if (cache) cache_store(c.op, *cache, a.qkv.data(), r);
    if (cache && r.n == 1) {
      std::vector<int64_t> pos(size_t(r.B));
      for (int64_t b = 0; b < r.B; b++) pos[size_t(b)] = r.position(b);
      c.op.attention_decode(a.att.data(), a.qkv.data(), cache->K.data(), cache->V.data(), cache->L,
                            sinks, pos.data(), r.slot, shape(r));
    } else {
      c.op.attention_forward(a.att.data(), a.lse.data(), a.qkv.data(), sinks, shape(r));
    }
  }
  {
    ProfileScope ps(prof, "out proj fwd");
    weight_forward(c, p_.o, 0, w.tmp.data(), a.att.data(), N, a.o_xa.data());
  }
  ProfileScope ps(prof, "residual fwd");
  c.op.add(x_out, x, w.tmp.data(), N * d);
}

// ----------------------------------------------------------------------------
// backward

template <typename T>
void AttentionBlock<T>::backward(const Ctx<T>& c, const Acts& a, Work& w, const T* x, T* dx, Rows r,
                                 const T* cos, const T* sin) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, H = cf.num_attention_heads, KV = cf.num_key_value_heads;
  const int64_t hd = cf.head_dim, C = p_.qkv.out, N = r.N();
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "out proj bwd");
    weight_backward(c, p_.o, 0, w.datt.data(), dx, a.att.data(), N, a.o_xa.data(), w.dxa.data());
  }
  {
    ProfileScope ps(prof, "attention bwd");
    c.op.attention_backward(w.dqkv.data(), p_.sinks >= 0 ? c.grad(p_.sinks, H) : nullptr,
                            w.datt.data(), a.qkv.data(), p_.sinks >= 0 ? c.P + p_.sinks : nullptr,
                            a.att.data(), a.lse.data(), shape(r));
  }
  {
    ProfileScope ps(prof, "rope bwd");
    c.op.rope_backward(w.dqkv.data(), N, r.n, H, hd, C, cos, sin);
    c.op.rope_backward(w.dqkv.data() + H * hd, N, r.n, KV, hd, C, cos, sin);
  }
  {
    ProfileScope ps(prof, "qkv proj bwd");
    weight_backward(c, p_.qkv, 0, w.dxn.data(), w.dqkv.data(), a.xn.data(), N, a.qkv_xa.data(),
                    w.dxa.data());
  }
  ProfileScope ps(prof, "rmsnorm bwd");
  c.op.rmsnorm_backward(dx, c.grad(p_.ln, d), w.dxn.data(), x, c.P + p_.ln, a.rstd.data(), N, d);
}

template class AttentionBlock<float>;
template class AttentionBlock<double>;

}  // namespace moelab
