#include "model/model.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <regex>

#include <fmt/format.h>

#include "core/error.hpp"
#include "core/profile.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// parameters

ModelParams model_register(ParamLayout& p, const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size;
  ModelParams m;
  m.embed = p.add("model.embed_tokens.weight", {V, d}, Init::Normal, true);
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    m.attn.push_back(attention_register(p, c, l));
    m.ffn.push_back(ffn_register(p, c, l));
  }
  m.norm = p.add("model.norm.weight", {d}, Init::Ones, false);
  m.lm_head = c.tie_word_embeddings ? m.embed : p.add("lm_head.weight", {V, d}, Init::Normal, true);
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    attention_register_lora(m.attn[size_t(l)], p, c);
    ffn_register_lora(m.ffn[size_t(l)], p, c);
    ffn_register_ct(m.ffn[size_t(l)], p, c);
  }
  for (FfnParams& f : m.ffn) ffn_register_balance(f, p, c);
  for (const std::string& t : c.lora.targets) {  // a pattern that adapts nothing is a mistake
    const std::regex re(t);
    if (std::none_of(p.tensors.begin(), p.tensors.end(), [&](const TensorView& v) {
          return v.name.find(".lora_A.") != std::string::npos && std::regex_search(v.name, re);
        }))
      fail(fmt::format(
          "model config: 'lora.targets': '{}' matches no weight an adapter can ride "
          "on (attention projections q|k|v|o_proj, mlp.experts.gate_up_proj, down_proj)",
          t));
  }
  return m;
}

ParamLayout layout_build(const ModelConfig& c) {
  ParamLayout p;
  model_register(p, c);
  return p;
}

// ----------------------------------------------------------------------------
// construction and initialisation

template <typename T>
Model<T>::Model(const ModelConfig& c, int64_t batch, int64_t seq, Device& dev)
    : cfg(c), B(batch), Tq(seq), N(batch * seq), dev_(&dev) {
  config_validate(cfg, "model config");
  if (batch <= 0 || seq <= 0) fail("model: batch size and sequence length must be positive");
  if (seq > cfg.max_position_embeddings)
    fail("model: sequence length exceeds max_position_embeddings");
  mp_ = model_register(layout, cfg);
  params.assign(size_t(layout.total), T(0));
  // gradients: laid out by grad_sync at the first zero_grad or backward, after any freezing (an
  // inference model never holds them)
  index.assign(size_t(layout.total_i32), 0);
  codes.assign(size_t(layout.total_i8), 0);
  wbuf_.resize(dev, rebuild_size());
  gbuf_.resize(dev, rebuild_size());
  const int64_t L = cfg.num_hidden_layers, d = cfg.hidden_size, hd = cfg.head_dim;
  act_.attn.resize(size_t(L));
  act_.ffn.resize(size_t(L));
  counts_.resize(size_t(L));
  for (int64_t l = 0; l < L; l++) {
    if (mp_.ffn[size_t(l)].mix == FfnKind::Moe)
      counts_[size_t(l)].assign(size_t(mp_.ffn[size_t(l)].cfg->num_local_experts), 0);
    attn_.emplace_back(cfg, mp_.attn[size_t(l)]);
    ffn_.emplace_back(cfg, mp_.ffn[size_t(l)]);
    attn_.back().reserve(dev, act_.attn[size_t(l)], attn_work_, N, true);
    ffn_.back().reserve(dev, act_.ffn[size_t(l)], ffn_work_, N, true);
  }
  act_.stream.resize(dev, (2 * L + 1) * N * d);
  act_.rstd_f.resize(dev, N);
  act_.xn_f.resize(dev, N * d);
  act_.logits.resize(dev, N * cfg.vocab_size);
  act_.lse.resize(dev, N);
  act_.dres.resize(dev, N * d);
  act_.dxn.resize(dev, N * d);
  rope_cos_.resize(dev, seq * hd / 2);
  rope_sin_.resize(dev, seq * hd / 2);
  kernels::RopeParams rp{cfg.rope_theta, cfg.yarn_factor, cfg.yarn_beta_fast, cfg.yarn_beta_slow,
                         cfg.yarn_original_context};
  dev.ops<T>().rope_tables(rope_cos_.data(), rope_sin_.data(), seq, hd, rp);
}

template <typename T>
void Model<T>::init_weights(uint64_t seed) {
  const double std_scaled = cfg.initializer_range / std::sqrt(2.0 * double(cfg.num_hidden_layers));
  const Ops<T>& op = dev_->ops<T>();
  for (size_t ti = 0; ti < layout.tensors.size(); ti++) {
    const TensorView& t = layout.tensors[ti];
    T* p = params.data() + t.offset;
    const double sd = t.init == Init::NormalScaled ? std_scaled : cfg.initializer_range;
    if (t.init == Init::Zeros || t.init == Init::Ones)
      op.fill(p, T(t.init == Init::Ones ? 1 : 0), t.numel);
    else
      op.fill_normal(p, t.numel, sd, seed, ti);
  }
  for (const FfnParams& f : mp_.ffn)
    ffn_init_positions(f, std::span<int32_t>(index), cfg.ders.seed);
  std::fill(codes.begin(), codes.end(), int8_t(0));
  init_derived([](const std::string&) { return true; });
}

template <typename T>
void Model<T>::init_derived(const std::function<bool(const std::string&)>& fresh) {
  for (const auto& f : ffn_) f.ct_derive(std::span<T>(params), layout, fresh);
}

template <typename T>
void Model<T>::grad_sync() {
  if (grad_layout.current(layout) && int64_t(grads.size()) == grad_layout.total) {
    return;
  }
  grad_layout = layout_pack(layout);
  grads = std::vector<T>(size_t(grad_layout.total), T(0));  // a fresh vector: no old capacity
}

template <typename T>
std::span<const T> Model<T>::grad_of(const TensorView& t) const {
  // t must be one of this layout's tensors (std::less: pointers into other arrays compare too)
  const std::less<const TensorView*> before;
  const TensorView* first = layout.tensors.data();
  check(!before(&t, first) && before(&t, first + layout.tensors.size()) &&
            grad_layout.current(layout),
        "grad_of: a tensor of this model, after grad_sync");
  const size_t i = size_t(&t - first);
  const int64_t at = grad_layout.at[i];
  if (at < 0) {
    return {};
  }
  return {grads.data() + at, size_t(t.numel)};
}

template <typename T>
void Model<T>::zero_grad() {
  grad_sync();
  dev_->ops<T>().fill(grads.data(), T(0), int64_t(grads.size()));
  for (auto& n : counts_) std::fill(n.begin(), n.end(), int64_t(0));
}

template <typename T>
void Model<T>::balance_update() {
  for (size_t l = 0; l < ffn_.size(); l++) {
    const int64_t at = mp_.ffn[l].balance;
    if (at < 0) continue;
    moelab::balance_update<T>(dev_->ops<T>(), std::span<T>(params.data() + at, counts_[l].size()),
                              counts_[l], cfg.router_balance.bias_rate);
  }
}

template <typename T>
Ctx<T> Model<T>::ctx(bool with_grads) {
  if (with_grads) {
    grad_sync();
  }
  return {*dev_,        dev_->ops<T>(), params.data(), with_grads ? grads.data() : nullptr,
          &layout,      index.data(),   codes.data(),  wbuf_.data(),
          gbuf_.data(), &grad_layout};
}

template <typename T>
Ctx<T> Model<T>::ctx_infer(T* wbuf) const {
  return {*dev_,        dev_->ops<T>(), params.data(), nullptr, &layout,
          index.data(), codes.data(),   wbuf,          nullptr};
}

template <typename T>
int64_t Model<T>::rebuild_size() const {
  int64_t n = 0;
  auto take = [&](const FfnParams& f) {
    for (const Weight* w : {&f.up, &f.down})
      if (w->rebuilt()) n = std::max(n, w->in * w->out);
  };
  for (const FfnParams& f : mp_.ffn) {
    take(f);
    if (f.ct) take(f.ct->experts);
  }
  return n;
}

// ----------------------------------------------------------------------------
// forward: the residual stream runs through stream(0), stream(1) (after layer 0's attention),
// stream(2) (after its FFN), ... stream(2L)

template <typename T>
Losses Model<T>::forward(std::span<const int32_t> tokens, std::span<const int32_t> targets) {
  check(int64_t(tokens.size()) == N && int64_t(targets.size()) == N, "forward: token count");
  const int64_t d = cfg.hidden_size, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  for (int32_t t : tokens)
    if (t < 0 || t >= V) fail("forward: token id out of range of vocab_size");
  for (int32_t t : targets)
    if (t >= V) fail("forward: target id out of range of vocab_size");
  act_.tokens.assign(tokens.begin(), tokens.end());
  act_.targets.assign(targets.begin(), targets.end());
  const Ctx<T> c = ctx(false);
  Profile& prof = dev_->profile;
  Losses loss;
  {
    ProfileScope ps(prof, "embedding fwd");
    c.op.embedding_forward(stream(0), tokens.data(), c.P + mp_.embed, N, d);
  }
  const Rows rows{B, Tq, 0};
  for (int64_t l = 0; l < L; l++) {
    attn_[size_t(l)].forward(c, act_.attn[size_t(l)], attn_work_, stream(2 * l), stream(2 * l + 1),
                             rows, rope_cos_.data(), rope_sin_.data(), nullptr);
    const kernels::RouterLosses rl = ffn_[size_t(l)].forward(
        c, act_.ffn[size_t(l)], ffn_work_, stream(2 * l + 1), stream(2 * l + 2), N);
    ffn_[size_t(l)].counts_add(act_.ffn[size_t(l)], counts_[size_t(l)]);
    loss.layers.push_back(rl);
    loss.aux += rl.aux / double(L);
    loss.z += rl.z / double(L);
  }
  {
    ProfileScope ps(prof, "rmsnorm fwd");
    c.op.rmsnorm_forward(act_.xn_f.data(), act_.rstd_f.data(), stream(2 * L), c.P + mp_.norm, N, d,
                         cfg.rms_norm_eps);
  }
  {
    ProfileScope ps(prof, "lm head fwd");
    c.op.linear_forward(act_.logits.data(), act_.xn_f.data(), c.P + mp_.lm_head, nullptr, N, d, V,
                        kernels::WLayout::OutIn, dev_->precision);
  }
  act_.n_valid = std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
  double sum = 0;
  {
    ProfileScope ps(prof, "cross-entropy fwd");
    sum =
        c.op.cross_entropy_forward(act_.lse.data(), act_.logits.data(), act_.targets.data(), N, V);
  }
  loss.lm = act_.n_valid > 0 ? sum / double(act_.n_valid) : 0.0;
  have_forward_ = true;
  return loss;
}

// ----------------------------------------------------------------------------
// backward

template <typename T>
void Model<T>::backward() {
  check(have_forward_, "backward called without a forward");
  const int64_t d = cfg.hidden_size, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  const Ctx<T> c = ctx(true);
  Profile& prof = dev_->profile;
  T* dlogits = act_.logits.data();  // the gradient overwrites the logits in place
  {
    ProfileScope ps(prof, "cross-entropy bwd");
    c.op.cross_entropy_backward(dlogits, act_.logits.data(), act_.lse.data(), act_.targets.data(),
                                N, V, act_.n_valid > 0 ? 1.0 / double(act_.n_valid) : 0.0);
  }
  {
    ProfileScope ps(prof, "lm head bwd");
    c.op.linear_backward(act_.dxn.data(), c.grad(mp_.lm_head, V * d), nullptr, dlogits,
                         act_.xn_f.data(), c.P + mp_.lm_head, N, d, V, kernels::WLayout::OutIn,
                         false, dev_->precision);
  }
  c.op.fill(act_.dres.data(), T(0), N * d);
  {
    ProfileScope ps(prof, "rmsnorm bwd");
    c.op.rmsnorm_backward(act_.dres.data(), c.grad(mp_.norm, d), act_.dxn.data(), stream(2 * L),
                          c.P + mp_.norm, act_.rstd_f.data(), N, d);
  }
  const Rows rows{B, Tq, 0};
  for (int64_t l = L - 1; l >= 0; l--) {  // dres: d(stream after the block)
    ffn_[size_t(l)].backward(c, act_.ffn[size_t(l)], ffn_work_, stream(2 * l + 1), act_.dres.data(),
                             N);
    attn_[size_t(l)].backward(c, act_.attn[size_t(l)], attn_work_, stream(2 * l), act_.dres.data(),
                              rows, rope_cos_.data(), rope_sin_.data());
    if (on_grads_ready) on_grads_ready(l);
  }
  if (T* ge = c.grad(mp_.embed, cfg.vocab_size * d)) {
    ProfileScope ps(prof, "embedding bwd");
    c.op.embedding_backward(ge, act_.dres.data(), act_.tokens.data(), N, d);
  }
  if (on_grads_ready) on_grads_ready(-1);
  have_forward_ = false;  // the logits now hold their gradient
}

// ----------------------------------------------------------------------------
// statistics

template <typename T>
std::vector<std::vector<double>> Model<T>::expert_load() const {
  std::vector<std::vector<double>> out;
  for (size_t l = 0; l < ffn_.size(); l++) out.push_back(ffn_[l].load(act_.ffn[l]));
  return out;
}

template <typename T>
int64_t Model<T>::activation_bytes() const {
  static_assert(buffers_all_listed<Acts, decltype(act_.buffers())>(
                    sizeof(Acts::attn) + sizeof(Acts::ffn) + sizeof(Acts::tokens) +
                    sizeof(Acts::targets) + sizeof(Acts::n_valid)),
                "a buffer of Model::Acts is missing from its buffers()");
  int64_t b = attn_work_.bytes() + ffn_work_.bytes() + buffers_bytes(buffers());
  for (const auto& a : act_.attn) b += a.bytes();
  for (const auto& a : act_.ffn) b += a.bytes();
  return b;
}

template class Model<float>;
template class Model<double>;

}  // namespace moelab
