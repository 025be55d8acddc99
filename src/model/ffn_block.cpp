#include "model/ffn_block.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "model/delta.hpp"

namespace moelab {

using kernels::WLayout;

// ----------------------------------------------------------------------------
// parameters

FfnKind ffn_kind(const ModelConfig& c, int64_t layer) {
  if (c.moe_ct.on(layer)) return FfnKind::MoeCt;
  return c.moe_at(layer) ? FfnKind::Moe : FfnKind::Dense;
}

// A routed weight's matrices, [E, in, out] under `name`: E full ones, or with DeRS the shared
// base NAME_base [in, out] and E deltas (NAME_delta_*).
void ffn_register_matrix(Weight& w, ParamLayout& p, const ModelConfig& c, const std::string& name,
                         Init init) {
  const int64_t E = w.experts, I = w.in, O = w.out;
  const DersConfig& ds = c.ders;
  if (!ds.on() || E <= 1) {
    w.w = p.add(name, {E, I, O}, init, true);
    return;
  }
  w.shared = true;
  w.w = p.add(name + "_base", {I, O}, init, true);
  WeightDelta& d = w.delta;
  d.kind = ds.delta;
  if (ds.delta == DeltaKind::Sparse) {
    d.nnz = ds.nnz(I * O);
    d.values = p.add(name + "_delta_values", {E, d.nnz}, Init::Zeros, true);
    d.indices = p.add_int(name + "_delta_indices", {E, d.nnz}, 32, I * O);
  } else if (ds.delta == DeltaKind::LowRank) {
    LoraSlot s;
    s.A = p.add(name + "_delta_A", {E, ds.rank, I}, Init::Normal, true);
    s.B = p.add(name + "_delta_B", {E, O, ds.rank}, Init::Zeros, true);
    s.rank = ds.rank, s.scale = ds.scale(), s.out_n = O;
    w.lora.push_back(s);
  } else {  // quant: codes and scales come from `moelab compress`; a fresh delta is zero
    d.codes = p.add_int(name + "_delta_codes", {E, I, O}, 8, ds.bits);
    d.scales = p.add(name + "_delta_scales", {E, O}, Init::Zeros, false);
    p.tensors.back().frozen = true;
  }
}

void ffn_register_experts(FfnParams& f, ParamLayout& p, const ModelConfig& c,
                          const std::string& pre, bool router) {
  const int64_t d = c.hidden_size, E = c.num_local_experts, I = c.intermediate_size;
  if (router) {
    f.router = {.in = d, .out = E};
    f.router.w = p.add(pre + "router.weight", {E, d}, Init::Normal, true);
    f.router.b = p.add(pre + "router.bias", {E}, Init::Zeros, false);
  }
  f.up = {.in = d, .out = 2 * I, .layout = WLayout::InOut, .experts = E};
  ffn_register_matrix(f.up, p, c, pre + "experts.gate_up_proj", Init::Normal);
  f.up.b = p.add(pre + "experts.gate_up_proj_bias", {E, 2 * I}, Init::Zeros, false);
  f.down = {.in = I, .out = d, .layout = WLayout::InOut, .experts = E};
  ffn_register_matrix(f.down, p, c, pre + "experts.down_proj", Init::NormalScaled);
  f.down.b = p.add(pre + "experts.down_proj_bias", {E, d}, Init::Zeros, false);
}

FfnParams ffn_register(ParamLayout& p, const ModelConfig& c, int64_t l) {
  auto lc = std::make_shared<const ModelConfig>(c.layer_config(l));
  const std::string pre = fmt::format("model.layers.{}.", l);
  FfnParams f;
  f.layer = l;
  f.cfg = lc;
  f.kind = ffn_kind(c, l);
  f.mix = lc->num_local_experts > 1 ? FfnKind::Moe : FfnKind::Dense;
  f.ln = p.add(pre + "post_attention_layernorm.weight", {c.hidden_size}, Init::Ones, false);
  // Hugging Face MoE files carry a router, even for one expert
  ffn_register_experts(f, p, *lc, pre + "mlp.", lc->is_moe());
  return f;
}

void ffn_init_positions(const FfnParams& f, std::span<int32_t> index, uint64_t seed) {
  for (const Weight* w : {&f.up, &f.down}) {
    const WeightDelta& d = w->delta;
    if (d.kind != DeltaKind::Sparse) continue;
    for (int64_t e = 0; e < w->experts; e++) {
      const uint64_t stream = (uint64_t(d.indices) << 16) ^ uint64_t(e);
      const std::vector<int32_t> pos = delta_random_positions(seed, stream, w->in * w->out, d.nnz);
      std::copy(pos.begin(), pos.end(), index.begin() + d.indices + e * d.nnz);
    }
  }
  if (f.ct) ffn_init_positions(f.ct->experts, index, seed);
}

void ffn_register_lora(FfnParams& f, ParamLayout& p, const ModelConfig& c) {
  const std::string pre = fmt::format("model.layers.{}.mlp.experts.", f.layer);
  weight_register_lora(f.up, p, c.lora, {{pre + "gate_up_proj", f.up.out}});
  weight_register_lora(f.down, p, c.lora, {{pre + "down_proj", f.down.out}});
}

void ffn_register_balance(FfnParams& f, ParamLayout& p, const ModelConfig& c) {
  if (!c.router_balance.on() || f.mix != FfnKind::Moe) return;
  const std::string name = fmt::format("model.layers.{}.mlp.router.balance_bias", f.layer);
  f.balance = p.add(name, {f.cfg->num_local_experts}, Init::Zeros, false);
  p.tensors.back().frozen = true;  // moved by balance_update, never by a gradient
}

template <typename T>
void balance_update(const Ops<T>& op, std::span<T> bias, std::span<const int64_t> counts,
                    double rate) {
  check(bias.size() == counts.size(), "balance_update: bias and counts differ in size");
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  if (total == 0) return;
  // sign(1/E - n_e/total) = sign(total - E n_e), exactly in integers
  const int64_t E = int64_t(counts.size());
  std::vector<T> step(counts.size());  // [E] each expert's move: +rate, -rate or 0
  for (size_t e = 0; e < counts.size(); e++) {
    const int64_t s = total - E * counts[e];
    step[e] = s > 0 ? T(rate) : s < 0 ? T(-rate) : T(0);
  }
  op.add(bias.data(), bias.data(), step.data(), E);
}
template void balance_update<float>(const Ops<float>&, std::span<float>, std::span<const int64_t>,
                                    double);
template void balance_update<double>(const Ops<double>&, std::span<double>,
                                     std::span<const int64_t>, double);

template <typename T>
FfnBlock<T>::FfnBlock(const ModelConfig& c, FfnParams p) : c_(&c), p_(std::move(p)) {
  if (p_.cfg) c_ = p_.cfg.get();
  if (p_.ct) ct_ = std::make_shared<const FfnBlock>(p_.ct->cfg, p_.ct->experts);
}

// ----------------------------------------------------------------------------
// buffers

template <typename T>
int64_t FfnBlock<T>::Acts::bytes() const {
  static_assert(buffers_all_listed<Acts, decltype(buffers())>(sizeof(ct)),
                "a buffer of FfnBlock::Acts is missing from buffers()");
  return buffers_bytes(buffers()) + (ct ? ct->bytes() : 0);
}

template <typename T>
int64_t FfnBlock<T>::Work::bytes() const {
  static_assert(buffers_all_listed<Work, decltype(buffers())>(sizeof(ct)),
                "a buffer of FfnBlock::Work is missing from buffers()");
  return buffers_bytes(buffers()) + (ct ? ct->bytes() : 0);
}

template <typename T>
void FfnBlock<T>::reserve(Device& dev, Acts& a, Work& w, int64_t N, bool backward) const {
  const ModelConfig& c = *c_;
  const int64_t d = c.hidden_size, E = c.num_local_experts, k = c.num_experts_per_tok;
  const int64_t I = c.intermediate_size, R = N * k;
  const int64_t ru = p_.up.lora_rank(), rd = p_.down.lora_rank();
  const bool moe = p_.mix == FfnKind::Moe;
  if (ct_) ct_reserve(dev, a, w, N, backward);
  a.rstd.grow(dev, N), a.xn.grow(dev, N * d), a.h.grow(dev, R * 2 * I), a.a.grow(dev, R * I);
  a.up_xa.grow(dev, R * ru), a.down_xa.grow(dev, R * rd);
  if (moe) {
    a.rlogits.grow(dev, N * E), a.idx.grow(dev, R), a.w.grow(dev, R), a.order.grow(dev, R);
    a.pos.grow(dev, R), a.offsets.grow(dev, E + 1), a.xe.grow(dev, R * d), a.y.grow(dev, R * d);
  }
  w.tmp.grow(dev, N * d);
  if (!backward) return;
  w.dxn.grow(dev, N * d), w.da.grow(dev, R * I), w.dh.grow(dev, R * 2 * I);
  w.dxa.grow(dev, R * std::max(ru, rd));
  if (moe) w.drl.grow(dev, N * E), w.dw.grow(dev, R), w.dy.grow(dev, R * d), w.dxe.grow(dev, R * d);
}

template <typename T>
kernels::MoeRouting FfnBlock<T>::routing(const Acts& a, int64_t N) const {
  return {N,
          c_->num_local_experts,
          c_->num_experts_per_tok,
          a.order.data(),
          a.pos.data(),
          a.offsets.data()};
}

// Each expert's rows [r0, r0 + n) among the R sorted rows (dense: one expert, all rows).
template <typename T>
std::vector<typename FfnBlock<T>::ExpertRows> FfnBlock<T>::expert_rows(const Acts& a,
                                                                       int64_t R) const {
  if (p_.mix == FfnKind::Dense) return {{0, 0, R}};
  std::vector<ExpertRows> ex;
  for (int64_t e = 0; e < c_->num_local_experts; e++)
    ex.push_back({e, a.offsets[e], a.offsets[e + 1] - a.offsets[e]});
  return ex;
}

// ----------------------------------------------------------------------------
// forward

// A routed weight that is E plain matrices (no adapters, no DeRS delta) goes through the grouped
// op, all experts in one call; the others expert by expert through the weight seam.
template <typename T>
bool FfnBlock<T>::grouped(const Weight& w) const {
  return p_.mix == FfnKind::Moe && w.lora.empty() && w.delta.kind == DeltaKind::None && !w.shared &&
         w.b >= 0;
}

// yout [R,d] = down(swiglu(up(xin))) per expert on its rows (dense: one expert, all rows).
template <typename T>
void FfnBlock<T>::experts_forward(const Ctx<T>& c, Acts& a, const T* xin, T* yout,
                                  int64_t R) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, I = cf.intermediate_size;
  const int64_t ru = p_.up.lora_rank(), rd = p_.down.lora_rank();
  const std::vector<ExpertRows> ex = expert_rows(a, R);
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "expert gemm fwd");
    if (grouped(p_.up)) {
      c.op.linear_grouped_forward(a.h.data(), xin, c.P + p_.up.w, c.P + p_.up.b, a.offsets.data(),
                                  cf.num_local_experts, d, 2 * I, p_.up.layout, c.dev.precision);
    } else {
      for (const auto [e, r0, n] : ex) {
        weight_forward(c, p_.up, e, a.h.data() + r0 * 2 * I, xin + r0 * d, n,
                       a.up_xa.data() + r0 * ru);
      }
    }
  }
  {
    ProfileScope ps(prof, "swiglu fwd");
    c.op.swiglu_forward(a.a.data(), a.h.data(), R, I, cf.swiglu_limit, cf.swiglu_alpha);
  }
  ProfileScope ps(prof, "expert gemm fwd");
  if (grouped(p_.down)) {
    c.op.linear_grouped_forward(yout, a.a.data(), c.P + p_.down.w, c.P + p_.down.b,
                                a.offsets.data(), cf.num_local_experts, I, d, p_.down.layout,
                                c.dev.precision);
    return;
  }
  for (const auto [e, r0, n] : ex) {
    weight_forward(c, p_.down, e, yout + r0 * d, a.a.data() + r0 * I, n,
                   a.down_xa.data() + r0 * rd);
  }
}

template <typename T>
kernels::RouterLosses FfnBlock<T>::mix_forward(const Ctx<T>& c, Acts& a, Work& w, const T* u,
                                               T* out, int64_t N) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, E = cf.num_local_experts, k = cf.num_experts_per_tok;
  if (p_.mix == FfnKind::Dense) {
    experts_forward(c, a, u, out, N);
    return {};
  }
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "router fwd");
    weight_forward<T>(c, p_.router, 0, a.rlogits.data(), u, N, nullptr);
    const T* bias = p_.balance >= 0 ? c.P + p_.balance : nullptr;
    c.op.router_forward(a.idx.data(), a.w.data(), a.rlogits.data(), bias, N, E, k);
    c.op.moe_sort(a.order.data(), a.pos.data(), a.offsets.data(), a.idx.data(), N, E, k);
  }
  const kernels::MoeRouting r = routing(a, N);
  {
    ProfileScope ps(prof, "moe dispatch fwd");
    c.op.moe_gather_forward(a.xe.data(), u, r, d);
  }
  experts_forward(c, a, a.xe.data(), a.y.data(), N * k);
  ProfileScope ps(prof, "moe dispatch fwd");
  c.op.moe_combine_forward(out, a.y.data(), a.w.data(), r, d);
  return c.op.router_loss_forward(a.rlogits.data(), a.idx.data(), N, E, k, cf.router_aux_loss_coef,
                                  cf.router_z_loss_coef);
}

template <typename T>
kernels::RouterLosses FfnBlock<T>::forward(const Ctx<T>& c, Acts& a, Work& w, const T* x, T* x_out,
                                           int64_t N) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size;
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "rmsnorm fwd");
    c.op.rmsnorm_forward(a.xn.data(), a.rstd.data(), x, c.P + p_.ln, N, d, cf.rms_norm_eps);
  }
  const kernels::RouterLosses losses = ct_ ? ct_forward(c, a, w, a.xn.data(), w.tmp.data(), N)
                                           : mix_forward(c, a, w, a.xn.data(), w.tmp.data(), N);
  ProfileScope ps(prof, "residual fwd");
  c.op.add(x_out, x, w.tmp.data(), N * d);
  return losses;
}

// ----------------------------------------------------------------------------
// backward

// dxin [R,d] = d(xin) from dy [R,d], the experts' parameter gradients accumulated.
template <typename T>
void FfnBlock<T>::experts_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* xin, T* dxin,
                                   const T* dy, int64_t R) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, I = cf.intermediate_size;
  const int64_t ru = p_.up.lora_rank(), rd = p_.down.lora_rank();
  const std::vector<ExpertRows> ex = expert_rows(a, R);
  const int64_t E = cf.num_local_experts;
  Profile& prof = c.dev.profile;
  {
    ProfileScope ps(prof, "expert gemm bwd");
    if (grouped(p_.down)) {
      c.op.linear_grouped_backward(
          w.da.data(), c.grad(p_.down.w, E * I * d), c.grad(p_.down.b, E * d), dy, a.a.data(),
          c.P + p_.down.w, a.offsets.data(), E, I, d, p_.down.layout, false, c.dev.precision);
    } else {
      for (const auto [e, r0, n] : ex) {
        weight_backward(c, p_.down, e, w.da.data() + r0 * I, dy + r0 * d, a.a.data() + r0 * I, n,
                        a.down_xa.data() + r0 * rd, w.dxa.data() + r0 * rd);
      }
    }
  }
  {
    ProfileScope ps(prof, "swiglu bwd");
    c.op.swiglu_backward(w.dh.data(), w.da.data(), a.h.data(), R, I, cf.swiglu_limit,
                         cf.swiglu_alpha);
  }
  ProfileScope ps(prof, "expert gemm bwd");
  if (grouped(p_.up)) {
    c.op.linear_grouped_backward(dxin, c.grad(p_.up.w, E * d * 2 * I), c.grad(p_.up.b, E * 2 * I),
                                 w.dh.data(), xin, c.P + p_.up.w, a.offsets.data(), E, d, 2 * I,
                                 p_.up.layout, false, c.dev.precision);
    return;
  }
  for (const auto [e, r0, n] : ex) {
    weight_backward(c, p_.up, e, dxin + r0 * d, w.dh.data() + r0 * 2 * I, xin + r0 * d, n,
                    a.up_xa.data() + r0 * ru, w.dxa.data() + r0 * ru);
  }
}

template <typename T>
void FfnBlock<T>::mix_backward(const Ctx<T>& c, const Acts& a, Work& w, const T* u, const T* dout,
                               T* du, int64_t N) const {
  const ModelConfig& cf = *c_;
  const int64_t d = cf.hidden_size, E = cf.num_local_experts, k = cf.num_experts_per_tok;
  if (p_.mix == FfnKind::Dense) {
    experts_backward(c, a, w, u, du, dout, N);
    return;
  }
  Profile& prof = c.dev.profile;
  const kernels::MoeRouting r = routing(a, N);
  {
    ProfileScope ps(prof, "moe dispatch bwd");
    c.op.moe_combine_backward(w.dy.data(), w.dw.data(), dout, a.y.data(), a.w.data(), r, d);
  }
  experts_backward(c, a, w, a.xe.data(), w.dxe.data(), w.dy.data(), N * k);
  std::fill_n(du, N * d, T(0));
  {
    ProfileScope ps(prof, "moe dispatch bwd");
    c.op.moe_gather_backward(du, w.dxe.data(), r, d);
  }
  ProfileScope ps(prof, "router bwd");
  c.op.router_backward(w.drl.data(), w.dw.data(), a.w.data(), a.idx.data(), N, E, k);
  c.op.router_loss_backward(w.drl.data(), a.rlogits.data(), a.idx.data(), N, E, k,
                            cf.router_aux_loss_coef, cf.router_z_loss_coef,
                            1.0 / double(cf.num_hidden_layers));
  weight_backward<T>(c, p_.router, 0, du, w.drl.data(), u, N, nullptr, nullptr,
                     /*dx_accumulate=*/true);
}

template <typename T>
void FfnBlock<T>::backward(const Ctx<T>& c, const Acts& a, Work& w, const T* x, T* dx,
                           int64_t N) const {
  const int64_t d = c_->hidden_size;
  if (ct_)
    ct_backward(c, a, w, a.xn.data(), dx, w.dxn.data(), N);
  else
    mix_backward(c, a, w, a.xn.data(), dx, w.dxn.data(), N);
  ProfileScope ps(c.dev.profile, "rmsnorm bwd");
  c.op.rmsnorm_backward(dx, c.grad(p_.ln, d), w.dxn.data(), x, c.P + p_.ln, a.rstd.data(), N, d);
}

template <typename T>
std::vector<double> FfnBlock<T>::load(const Acts& a) const {
  const int64_t E = c_->num_local_experts;
  std::vector<double> f(size_t(E), p_.mix == FfnKind::Dense ? 1.0 : 0.0);
  if (p_.mix == FfnKind::Moe)
    for (int64_t e = 0; e < E; e++)
      f[size_t(e)] = double(a.offsets[e + 1] - a.offsets[e]) / double(a.offsets[E]);
  return f;
}

template <typename T>
void FfnBlock<T>::counts_add(const Acts& a, std::span<int64_t> counts) const {
  if (p_.mix != FfnKind::Moe) return;
  for (size_t e = 0; e < counts.size(); e++) counts[e] += a.offsets[e + 1] - a.offsets[e];
}

template class FfnBlock<float>;
template class FfnBlock<double>;

}  // namespace moelab
