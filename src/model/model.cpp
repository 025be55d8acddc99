#include "model/model.hpp"
#include "core/parallel.hpp"
#include "core/profile.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/ffn.hpp"

namespace moelab {

using namespace kernels;

namespace {

template <typename T>
void add_into(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <typename T>
int64_t bytes_of(const std::vector<T>& v) {
  return int64_t(v.size() * sizeof(T));
}

}  // namespace

// ----------------------------------------------------------------------------
// construction and initialisation

template <typename T>
Model<T>::Model(const ModelConfig& c, int64_t batch, int64_t seq)
    : cfg(c), layout(layout_build(c)), B(batch), Tq(seq), N(batch * seq) {
  config_validate(cfg, "model config");
  if (batch <= 0 || seq <= 0) fail("model: batch size and sequence length must be positive");
  if (seq > cfg.max_position_embeddings)
    fail("model: sequence length exceeds max_position_embeddings");
  params.assign(size_t(layout.total), T(0));
  grads.assign(size_t(layout.total), T(0));
  const int64_t d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.num_key_value_heads;
  const int64_t hd = cfg.head_dim, C = (H + 2 * KV) * hd, E = cfg.num_local_experts;
  const int64_t k = cfg.num_experts_per_tok, I = cfg.intermediate_size, R = N * k;
  act_.layers.resize(size_t(cfg.num_hidden_layers));
  for (auto& a : act_.layers) {
    a.res.resize(N * d);
    a.rstd1.resize(N);
    a.xn1.resize(N * d);
    a.qkv.resize(N * C);
    a.att.resize(N * H * hd);
    a.lse.resize(N * H);
    a.mid.resize(N * d);
    a.rstd2.resize(N);
    a.xn2.resize(N * d);
    a.h.resize(R * 2 * I);
    a.a.resize(R * I);
    if (E > 1) {
      a.rlogits.resize(N * E);
      a.idx.resize(R);
      a.w.resize(R);
      a.order.resize(R);
      a.pos.resize(R);
      a.offsets.resize(E + 1);
      a.xe.resize(R * d);
      a.y.resize(R * d);
    }
  }
  act_.res_final.resize(N * d);
  act_.rstd_f.resize(N);
  act_.xn_f.resize(N * d);
  act_.logits.resize(N * cfg.vocab_size);
  act_.lse.resize(N);
  s_.dres.resize(N * d);
  s_.dxn.resize(N * d);
  s_.tmp.resize(N * d);
  s_.dqkv.resize(N * C);
  s_.datt.resize(N * H * hd);
  s_.da.resize(R * I);
  s_.dh.resize(R * 2 * I);
  if (E > 1) {
    s_.drl.resize(N * E);
    s_.dw.resize(R);
    s_.dy.resize(R * d);
    s_.dxe.resize(R * d);
  }
  rope_cos_.resize(seq * hd / 2);
  rope_sin_.resize(seq * hd / 2);
  RopeParams rp{cfg.rope_theta, cfg.yarn_factor, cfg.yarn_beta_fast, cfg.yarn_beta_slow,
                cfg.yarn_original_context};
  rope<T>::tables(rope_cos_.data(), rope_sin_.data(), seq, hd, rp);
}

template <typename T>
void Model<T>::init_weights(uint64_t seed) {
  const double std_scaled = cfg.initializer_range / std::sqrt(2.0 * double(cfg.num_hidden_layers));
  for (size_t ti = 0; ti < layout.tensors.size(); ti++) {
    const TensorView& t = layout.tensors[ti];
    T* p = params.data() + t.offset;
    const double sd = t.init == Init::NormalScaled ? std_scaled : cfg.initializer_range;
#pragma omp parallel for schedule(static) if (parallel_worth(t.numel))
    for (int64_t i = 0; i < t.numel; i++) {
      switch (t.init) {
        case Init::Zeros:
          p[i] = T(0);
          break;
        case Init::Ones:
          p[i] = T(1);
          break;
        default:
          p[i] = T(sd * rng_normal(seed, ti, uint64_t(i)));
      }
    }
  }
}

template <typename T>
void Model<T>::zero_grad() {
  std::fill(grads.begin(), grads.end(), T(0));
}

template <typename T>
T* Model<T>::grad_or_null(int64_t offset, int64_t n) {
  if (offset < 0 || layout.frozen_range(offset, n)) return nullptr;
  return grads.data() + offset;
}

template <typename T>
AttnShape Model<T>::attn_shape(int64_t l) const {
  return {B,
          Tq,
          cfg.num_attention_heads,
          cfg.num_key_value_heads,
          cfg.head_dim,
          cfg.layer_sliding[size_t(l)] ? cfg.sliding_window : 0,
          1.0 / std::sqrt(double(cfg.head_dim))};
}

template <typename T>
MoeRouting Model<T>::routing(const LayerActs& a) const {
  return {N,
          cfg.num_local_experts,
          cfg.num_experts_per_tok,
          a.order.data(),
          a.pos.data(),
          a.offsets.data()};
}

// ----------------------------------------------------------------------------
// forward

template <typename T>
void Model<T>::ffn_forward(int64_t l, LayerActs& a, T* out) {
  moelab::ffn_forward<T>(
      cfg, params.data(), layout.layers[size_t(l)], N, a.xn2.data(), out,
      {a.h.data(), a.a.data(), a.y.data(), a.xe.data(), a.rlogits.data(), a.w.data(), a.idx.data(),
       a.order.data(), a.pos.data(), a.offsets.data()});
}

template <typename T>
Losses Model<T>::forward(std::span<const int32_t> tokens, std::span<const int32_t> targets) {
  check(int64_t(tokens.size()) == N && int64_t(targets.size()) == N, "forward: token count");
  const int64_t d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.num_key_value_heads;
  const int64_t hd = cfg.head_dim, C = (H + 2 * KV) * hd, V = cfg.vocab_size;
  const int64_t E = cfg.num_local_experts, k = cfg.num_experts_per_tok;
  for (int32_t t : tokens)
    if (t < 0 || t >= V) fail("forward: token id out of range of vocab_size");
  for (int32_t t : targets)
    if (t >= V) fail("forward: target id out of range of vocab_size");
  act_.tokens.assign(tokens.begin(), tokens.end());
  act_.targets.assign(targets.begin(), targets.end());
  const T* P = params.data();
  Losses loss;

  {
    ProfileScope prof("embedding fwd");
    embedding<T>::forward(act_.layers[0].res.data(), tokens.data(), P + layout.embed, N, d);
  }
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    LayerActs& a = act_.layers[size_t(l)];
    const LayerOffsets& o = layout.layers[size_t(l)];
    T* next = l + 1 < cfg.num_hidden_layers ? act_.layers[size_t(l + 1)].res.data()
                                            : act_.res_final.data();
    // attention block
    {
      ProfileScope prof("rmsnorm fwd");
      rmsnorm<T>::forward(a.xn1.data(), a.rstd1.data(), a.res.data(), P + o.ln1, N, d,
                          cfg.rms_norm_eps);
    }
    {
      ProfileScope prof("qkv proj fwd");
      linear<T>::forward(a.qkv.data(), a.xn1.data(), P + o.qkv_w,
                         o.qkv_b >= 0 ? P + o.qkv_b : nullptr, N, d, C, WLayout::OutIn);
    }
    {
      ProfileScope prof("rope fwd");
      rope<T>::forward(a.qkv.data(), N, Tq, H, hd, C, rope_cos_.data(), rope_sin_.data());
      rope<T>::forward(a.qkv.data() + H * hd, N, Tq, KV, hd, C, rope_cos_.data(), rope_sin_.data());
    }
    {
      ProfileScope prof("attention fwd");
      attention<T>::forward(a.att.data(), a.lse.data(), a.qkv.data(),
                            o.sinks >= 0 ? P + o.sinks : nullptr, attn_shape(l));
    }
    {
      ProfileScope prof("out proj fwd");
      linear<T>::forward(s_.tmp.data(), a.att.data(), P + o.o_w, o.o_b >= 0 ? P + o.o_b : nullptr,
                         N, H * hd, d, WLayout::OutIn);
    }
    {
      ProfileScope prof("residual fwd");
      add_into(a.mid.data(), a.res.data(), s_.tmp.data(), N * d);
    }
    // feed-forward block
    {
      ProfileScope prof("rmsnorm fwd");
      rmsnorm<T>::forward(a.xn2.data(), a.rstd2.data(), a.mid.data(), P + o.ln2, N, d,
                          cfg.rms_norm_eps);
    }
    ffn_forward(l, a, s_.tmp.data());
    {
      ProfileScope prof("residual fwd");
      add_into(next, a.mid.data(), s_.tmp.data(), N * d);
    }
    if (E > 1) {
      const RouterLosses rl =
          router<T>::loss_forward(a.rlogits.data(), a.idx.data(), N, E, k, cfg.router_aux_loss_coef,
                                  cfg.router_z_loss_coef);
      loss.aux += rl.aux / double(cfg.num_hidden_layers);
      loss.z += rl.z / double(cfg.num_hidden_layers);
    }
  }
  {
    ProfileScope prof("rmsnorm fwd");
    rmsnorm<T>::forward(act_.xn_f.data(), act_.rstd_f.data(), act_.res_final.data(),
                        P + layout.norm, N, d, cfg.rms_norm_eps);
  }
  {
    ProfileScope prof("lm head fwd");
    linear<T>::forward(act_.logits.data(), act_.xn_f.data(), P + layout.lm_head, nullptr, N, d, V,
                       WLayout::OutIn);
  }
  act_.n_valid = std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
  double sum = 0;
  {
    ProfileScope prof("cross-entropy fwd");
    sum = cross_entropy<T>::forward(act_.lse.data(), act_.logits.data(), act_.targets.data(), N, V);
  }
  loss.lm = act_.n_valid > 0 ? sum / double(act_.n_valid) : 0.0;
  have_forward_ = true;
  return loss;
}

// ----------------------------------------------------------------------------
// backward

template <typename T>
void Model<T>::ffn_backward(int64_t l, LayerActs& a, const T* dout, T* dxn) {
  const LayerOffsets& o = layout.layers[size_t(l)];
  const T* P = params.data();
  const int64_t d = cfg.hidden_size, E = cfg.num_local_experts, k = cfg.num_experts_per_tok;
  const int64_t I = cfg.intermediate_size;
  T* gw1 = grad_or_null(o.w1, E * d * 2 * I);
  T* gb1 = grad_or_null(o.b1, E * 2 * I);
  T* gw2 = grad_or_null(o.w2, E * I * d);
  T* gb2 = grad_or_null(o.b2, E * d);
  if (E == 1) {
    {
      ProfileScope prof("expert gemm bwd");
      linear<T>::backward(s_.da.data(), gw2, gb2, dout, a.a.data(), P + o.w2, N, I, d,
                          WLayout::InOut);
    }
    {
      ProfileScope prof("swiglu bwd");
      swiglu<T>::backward(s_.dh.data(), s_.da.data(), a.h.data(), N, I, cfg.swiglu_limit,
                          cfg.swiglu_alpha);
    }
    {
      ProfileScope prof("expert gemm bwd");
      linear<T>::backward(dxn, gw1, gb1, s_.dh.data(), a.xn2.data(), P + o.w1, N, d, 2 * I,
                          WLayout::InOut);
    }
    return;
  }
  const MoeRouting r = routing(a);
  {
    ProfileScope prof("moe dispatch bwd");
    moe_combine<T>::backward(s_.dy.data(), s_.dw.data(), dout, a.y.data(), a.w.data(), r, d);
  }
  {
    ProfileScope prof("expert gemm bwd");
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = a.offsets[e], cnt = a.offsets[e + 1] - r0;
      linear<T>::backward(s_.da.data() + r0 * I, gw2 ? gw2 + e * I * d : nullptr,
                          gb2 ? gb2 + e * d : nullptr, s_.dy.data() + r0 * d, a.a.data() + r0 * I,
                          P + o.w2 + e * I * d, cnt, I, d, WLayout::InOut);
    }
  }
  {
    ProfileScope prof("swiglu bwd");
    swiglu<T>::backward(s_.dh.data(), s_.da.data(), a.h.data(), N * k, I, cfg.swiglu_limit,
                        cfg.swiglu_alpha);
  }
  {
    ProfileScope prof("expert gemm bwd");
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = a.offsets[e], cnt = a.offsets[e + 1] - r0;
      linear<T>::backward(s_.dxe.data() + r0 * d, gw1 ? gw1 + e * d * 2 * I : nullptr,
                          gb1 ? gb1 + e * 2 * I : nullptr, s_.dh.data() + r0 * 2 * I,
                          a.xe.data() + r0 * d, P + o.w1 + e * d * 2 * I, cnt, d, 2 * I,
                          WLayout::InOut);
    }
  }
  std::fill_n(dxn, N * d, T(0));
  {
    ProfileScope prof("moe dispatch bwd");
    moe_gather<T>::backward(dxn, s_.dxe.data(), r, d);
  }
  {
    ProfileScope prof("router bwd");
    router<T>::backward(s_.drl.data(), s_.dw.data(), a.w.data(), a.idx.data(), N, E, k);
    router<T>::loss_backward(s_.drl.data(), a.rlogits.data(), a.idx.data(), N, E, k,
                             cfg.router_aux_loss_coef, cfg.router_z_loss_coef,
                             1.0 / double(cfg.num_hidden_layers));
    linear<T>::backward(dxn, grad_or_null(o.router_w, E * d), grad_or_null(o.router_b, E),
                        s_.drl.data(), a.xn2.data(), P + o.router_w, N, d, E, WLayout::OutIn,
                        /*dx_accumulate=*/true);
  }
}

template <typename T>
void Model<T>::backward() {
  check(have_forward_, "backward called without a forward");
  const int64_t d = cfg.hidden_size, H = cfg.num_attention_heads, KV = cfg.num_key_value_heads;
  const int64_t hd = cfg.head_dim, C = (H + 2 * KV) * hd, V = cfg.vocab_size;
  const T* P = params.data();

  // head: dlogits overwrite the logits in place
  T* dlogits = act_.logits.data();
  {
    ProfileScope prof("cross-entropy bwd");
    cross_entropy<T>::backward(dlogits, act_.logits.data(), act_.lse.data(), act_.targets.data(), N,
                               V, act_.n_valid > 0 ? 1.0 / double(act_.n_valid) : 0.0);
  }
  {
    ProfileScope prof("lm head bwd");
    linear<T>::backward(s_.dxn.data(), grad_or_null(layout.lm_head, V * d), nullptr, dlogits,
                        act_.xn_f.data(), P + layout.lm_head, N, d, V, WLayout::OutIn);
  }
  std::fill(s_.dres.begin(), s_.dres.end(), T(0));
  {
    ProfileScope prof("rmsnorm bwd");
    rmsnorm<T>::backward(s_.dres.data(), grad_or_null(layout.norm, d), s_.dxn.data(),
                         act_.res_final.data(), P + layout.norm, act_.rstd_f.data(), N, d);
  }

  for (int64_t l = cfg.num_hidden_layers - 1; l >= 0; l--) {
    LayerActs& a = act_.layers[size_t(l)];
    const LayerOffsets& o = layout.layers[size_t(l)];
    // feed-forward block: dres holds d(residual after this layer)
    ffn_backward(l, a, s_.dres.data(), s_.dxn.data());
    {
      ProfileScope prof("rmsnorm bwd");
      rmsnorm<T>::backward(s_.dres.data(), grad_or_null(o.ln2, d), s_.dxn.data(), a.mid.data(),
                           P + o.ln2, a.rstd2.data(), N, d);
    }
    // attention block: dres holds d(mid)
    {
      ProfileScope prof("out proj bwd");
      linear<T>::backward(s_.datt.data(), grad_or_null(o.o_w, d * H * hd), grad_or_null(o.o_b, d),
                          s_.dres.data(), a.att.data(), P + o.o_w, N, H * hd, d, WLayout::OutIn);
    }
    {
      ProfileScope prof("attention bwd");
      attention<T>::backward(s_.dqkv.data(), grad_or_null(o.sinks, H), s_.datt.data(), a.qkv.data(),
                             o.sinks >= 0 ? P + o.sinks : nullptr, a.att.data(), a.lse.data(),
                             attn_shape(l));
    }
    {
      ProfileScope prof("rope bwd");
      rope<T>::backward(s_.dqkv.data(), N, Tq, H, hd, C, rope_cos_.data(), rope_sin_.data());
      rope<T>::backward(s_.dqkv.data() + H * hd, N, Tq, KV, hd, C, rope_cos_.data(),
                        rope_sin_.data());
    }
    {
      ProfileScope prof("qkv proj bwd");
      linear<T>::backward(s_.dxn.data(), grad_or_null(o.qkv_w, C * d), grad_or_null(o.qkv_b, C),
                          s_.dqkv.data(), a.xn1.data(), P + o.qkv_w, N, d, C, WLayout::OutIn);
    }
    {
      ProfileScope prof("rmsnorm bwd");
      rmsnorm<T>::backward(s_.dres.data(), grad_or_null(o.ln1, d), s_.dxn.data(), a.res.data(),
                           P + o.ln1, a.rstd1.data(), N, d);
    }
  }
  if (T* ge = grad_or_null(layout.embed, cfg.vocab_size * d)) {
    ProfileScope prof("embedding bwd");
    embedding<T>::backward(ge, s_.dres.data(), act_.tokens.data(), N, d);
  }
  have_forward_ = false;  // the logits now hold their gradient
}

// ----------------------------------------------------------------------------
// statistics

template <typename T>
std::vector<std::vector<double>> Model<T>::expert_load() const {
  std::vector<std::vector<double>> out;
  const int64_t E = cfg.num_local_experts;
  for (const auto& a : act_.layers) {
    std::vector<double> f(size_t(E), E == 1 ? 1.0 : 0.0);
    if (E > 1)
      for (int64_t e = 0; e < E; e++)
        f[size_t(e)] = double(a.offsets[e + 1] - a.offsets[e]) / double(a.idx.size());
    out.push_back(std::move(f));
  }
  return out;
}

template <typename T>
int64_t Model<T>::activation_bytes() const {
  int64_t b = 0;
  for (const auto& a : act_.layers)
    b += bytes_of(a.res) + bytes_of(a.rstd1) + bytes_of(a.xn1) + bytes_of(a.qkv) + bytes_of(a.att) +
         bytes_of(a.lse) + bytes_of(a.mid) + bytes_of(a.rstd2) + bytes_of(a.xn2) +
         bytes_of(a.rlogits) + bytes_of(a.idx) + bytes_of(a.w) + bytes_of(a.order) +
         bytes_of(a.pos) + bytes_of(a.offsets) + bytes_of(a.xe) + bytes_of(a.h) + bytes_of(a.a) +
         bytes_of(a.y);
  b += bytes_of(act_.res_final) + bytes_of(act_.rstd_f) + bytes_of(act_.xn_f) +
       bytes_of(act_.logits) + bytes_of(act_.lse);
  b += bytes_of(s_.dres) + bytes_of(s_.dxn) + bytes_of(s_.tmp) + bytes_of(s_.dqkv) +
       bytes_of(s_.datt) + bytes_of(s_.drl) + bytes_of(s_.dw) + bytes_of(s_.dy) + bytes_of(s_.da) +
       bytes_of(s_.dh) + bytes_of(s_.dxe);
  return b;
}

template class Model<float>;
template class Model<double>;

}  // namespace moelab
