// MoE-CT (docs/methods.md §3.12): a layer's frozen FFN F beside N new experts M with their own
// top-k router, fused by a gate: out = (1 - a) F(u) + a M(u), a fixed, one learned scalar per
// layer, or per token sigmoid(u w^T + b).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "model/ffn_block.hpp"

namespace moelab {

using kernels::WLayout;

// ----------------------------------------------------------------------------
// parameters

void ffn_register_ct(FfnParams& f, ParamLayout& p, const ModelConfig& c) {
  if (f.kind != FfnKind::MoeCt) return;
  const MoeCtConfig& m = c.moe_ct;
  const int64_t N = m.experts, d = c.hidden_size;
  const std::string pre = fmt::format("model.layers.{}.mlp.ct.", f.layer);
  auto ct = std::make_shared<CtParams>();
  ct->cfg = c;
  ct->cfg.num_local_experts = N;
  ct->cfg.num_experts_per_tok = m.top_k;
  ct->cfg.ffn_type = FfnKind::Moe;
  ct->cfg.moe_ct = {};
  ct->cfg.moe_layers.clear();
  ct->gate = m.gate, ct->lambda = m.lambda, ct->copy = m.copy;
  FfnParams& e = ct->experts;
  e.layer = f.layer;
  e.kind = e.mix = FfnKind::Moe;
  ffn_register_experts(e, p, ct->cfg, pre, true);
  if (m.gate == CtGate::Scalar) ct->scalar = p.add(pre + "gate.weight", {1}, Init::Zeros, false);
  if (m.gate == CtGate::Token) {
    ct->token = {.in = d, .out = 1};
    ct->token.w = p.add(pre + "gate.weight", {1, d}, Init::Zeros, true);
    ct->token.b = p.add(pre + "gate.bias", {1}, Init::Zeros, false);
  }
  f.ct = std::move(ct);
}

// New experts copy the layer's FFN (expert i of N from expert i mod E of the layer); the gate
// starts at lambda. Only tensors not loaded from a checkpoint are set.
template <typename T>
void FfnBlock<T>::ct_derive(std::span<T> P, const ParamLayout& layout,
                            const std::function<bool(const std::string&)>& fresh) const {
  if (!p_.ct) return;
  const CtParams& ct = *p_.ct;
  auto set = [&](int64_t off, auto&& fill) {
    for (const TensorView& t : layout.tensors)
      if (t.offset == off && fresh(t.name)) fill(P.data() + off);
  };
  const int64_t E = c_->num_local_experts, N = ct.cfg.num_local_experts;
  struct Copy {
    int64_t to, n, per;  // offset, matrices to fill (N, or 1 for a shared DeRS base), elements
    const Weight& from;
    bool bias;
  };
  const Weight &up = ct.experts.up, &down = ct.experts.down;
  auto at = [](const Weight& w, int64_t e, bool bias) {
    return bias ? w.b + e * w.out : w.w_at(e);
  };
  if (ct.copy)
    for (const Copy& cp : {Copy{up.w, up.shared ? 1 : N, up.in * up.out, p_.up, false},
                           Copy{up.b, N, up.out, p_.up, true},
                           Copy{down.w, down.shared ? 1 : N, down.in * down.out, p_.down, false},
                           Copy{down.b, N, down.out, p_.down, true}})
      set(cp.to, [&](T* out) {
        for (int64_t i = 0; i < cp.n; i++)
          std::copy_n(P.data() + at(cp.from, i % E, cp.bias), cp.per, out + i * cp.per);
      });
  if (ct.scalar >= 0) set(ct.scalar, [&](T* a) { a[0] = T(ct.lambda); });
  if (ct.token.b >= 0)
    set(ct.token.b, [&](T* b) { b[0] = T(std::log(ct.lambda / (1 - ct.lambda))); });
}

// ----------------------------------------------------------------------------
// buffers

template <typename T>
void FfnBlock<T>::ct_reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const {
  const int64_t d = c_->hidden_size;
  if (!a.ct) a.ct = std::make_unique<Acts>();
  if (!w.ct) w.ct = std::make_unique<Work>();
  ct_->reserve(dev, *a.ct, *w.ct, N, backward);
  a.F.grow(dev, N * d), a.M.grow(dev, N * d), a.gate.grow(dev, N);
  if (backward)
    w.dF.grow(dev, N * d), w.dM.grow(dev, N * d), w.dgate.grow(dev, N), w.dgu.grow(dev, N * d);
}

// ----------------------------------------------------------------------------
// forward

template <typename T>
kernels::RouterLosses FfnBlock<T>::ct_forward(const Ctx<T>& c, Acts& a, Work& w, const T* u, T* out,
                                              int64_t N) const {
  const CtParams& ct = *p_.ct;
  const int64_t d = c_->hidden_size;
  kernels::RouterLosses l = mix_forward(c, a, w, u, a.F.data(), N);
  const kernels::RouterLosses lm = ct_->mix_forward(c, *a.ct, *w.ct, u, a.M.data(), N);
  l.aux += lm.aux, l.z += lm.z;
  ProfileScope ps(c.dev.profile, "moe-ct gate fwd");
  const T* g = a.gate.data();
  int64_t stride = 0;
  if (ct.gate == CtGate::Fixed) {
    a.gate[0] = T(ct.lambda);
  } else if (ct.gate == CtGate::Scalar) {
    g = c.P + ct.scalar;
  } else {  // a = sigmoid(u w^T + b), per token
    weight_forward<T>(c, ct.token, 0, a.gate.data(), u, N, nullptr);
    c.op.sigmoid_forward(a.gate.data(), a.gate.data(), N);
    stride = 1;
  }
  c.op.fusion_forward(out, a.F.data(), a.M.data(), g, stride, N, d);
  return l;
}

// ----------------------------------------------------------------------------
// backward

template <typename T>
void FfnBlock<T>::ct_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* u, const T* dout,
                              T* du, int64_t N) const {
  const CtParams& ct = *p_.ct;
  const int64_t d = c_->hidden_size;
  const bool token = ct.gate == CtGate::Token;
  const T* g = ct.gate == CtGate::Scalar ? c.P + ct.scalar : a.gate.data();
  T* ds = ct.scalar >= 0 ? c.grad(ct.scalar, 1) : nullptr;
  const bool need_da = ds || (token && (c.grad(ct.token.w, d) || c.grad(ct.token.b, 1)));
  {
    ProfileScope ps(c.dev.profile, "moe-ct gate bwd");
    c.op.fusion_backward(w.dF.data(), w.dM.data(), need_da ? w.dgate.data() : nullptr, dout,
                         a.F.data(), a.M.data(), g, token ? 1 : 0, N, d);
  }
  mix_backward(c, a, w, u, w.dF.data(), du, N);
  ct_->mix_backward(c, *a.ct, *w.ct, u, w.dM.data(), w.ct->dxn.data(), N);
  c.op.add(du, du, w.ct->dxn.data(), N * d);
  if (!need_da) return;
  if (ds) {  // a = s for every token
    ds[0] += T(c.op.sum(w.dgate.data(), N));
    return;
  }
  c.op.sigmoid_backward(w.dgate.data(), w.dgate.data(), a.gate.data(), N);  // d(z)
  weight_backward<T>(c, ct.token, 0, w.dgu.data(), w.dgate.data(), u, N, nullptr, nullptr);
  c.op.add(du, du, w.dgu.data(), N * d);
}

template void FfnBlock<float>::ct_derive(std::span<float>, const ParamLayout&,
                                         const std::function<bool(const std::string&)>&) const;
template void FfnBlock<double>::ct_derive(std::span<double>, const ParamLayout&,
                                          const std::function<bool(const std::string&)>&) const;
template void FfnBlock<float>::ct_reserve(Device&, Acts&, Work&, int64_t, bool) const;
template void FfnBlock<double>::ct_reserve(Device&, Acts&, Work&, int64_t, bool) const;
template kernels::RouterLosses FfnBlock<float>::ct_forward(const Ctx<float>&, Acts&, Work&,
                                                           const float*, float*, int64_t) const;
template kernels::RouterLosses FfnBlock<double>::ct_forward(const Ctx<double>&, Acts&, Work&,
                                                            const double*, double*, int64_t) const;
template void FfnBlock<float>::ct_backward(const Ctx<float>&, const Acts&, Work&, const float*,
                                           const float*, float*, int64_t) const;
template void FfnBlock<double>::ct_backward(const Ctx<double>&, const Acts&, Work&, const double*,
                                            const double*, double*, int64_t) const;

}  // namespace moelab
