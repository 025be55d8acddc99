#include "train/adamw.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// moments of the trainable tensors

template <typename T>
AdamW<T>::AdamW(const ParamLayout& layout, AdamWConfig c, Device& dev, int shard_rank,
                int shard_ranks)
    : cfg(c), layout_(&layout), op_(&dev.ops<T>()) {
  check(shard_ranks >= 1 && shard_rank >= 0 && shard_rank < shard_ranks,
        "AdamW: a shard is one of 1 or more ranks");
  shard_rank_ = shard_rank;
  shard_ranks_ = shard_ranks;
  build();
}

template <typename T>
void AdamW<T>::build() {
  spans_.clear();
  const PackedLayout packed = layout_pack(*layout_);  // the gradients' layout too
  moment_at_ = packed.at;
  for (size_t i = 0; i < layout_->tensors.size(); i++) {
    const TensorView& t = layout_->tensors[i];
    if (t.frozen) continue;
    AdamWSpan* last = spans_.empty() ? nullptr : &spans_.back();
    if (last && last->param + last->numel == t.offset && last->decay == t.decay)
      last->numel += t.numel;
    else
      spans_.push_back({t.offset, moment_at_[i], t.numel, t.decay});
  }
  packed_ = packed.total;
  build_shard();
  const auto [lo, hi] = shard_range(shard_rank_);
  m = std::vector<T>(size_t(hi - lo), T(0));
  v = std::vector<T>(size_t(hi - lo), T(0));
}

template <typename T>
void AdamW<T>::build_shard() {
  const auto [lo, hi] = shard_range(shard_rank_);
  shard_spans_.clear();
  for (const AdamWSpan& s : spans_) {
    const int64_t a = std::max(lo, s.moment), b = std::min(hi, s.moment + s.numel);
    if (a < b) shard_spans_.push_back({s.param + (a - s.moment), a - lo, b - a, s.decay});
  }
}

template <typename T>
std::pair<int64_t, int64_t> AdamW<T>::shard_range(int rank) const {
  check(rank >= 0 && rank < shard_ranks_, "AdamW: no such shard");
  const int64_t P = shard_ranks_;
  return {packed_ * rank / P, packed_ * (rank + 1) / P};
}

template <typename T>
void AdamW<T>::set_shard(int rank, int ranks) {
  check(ranks >= 1 && rank >= 0 && rank < ranks, "AdamW: a shard is one of 1 or more ranks");
  check(step == 0, "AdamW: the shard is set before the first step");
  shard_rank_ = rank;
  shard_ranks_ = ranks;
  build();
}

template <typename T>
void AdamW<T>::unshard(std::vector<T> m_all, std::vector<T> v_all) {
  check(int64_t(m_all.size()) == packed_ && int64_t(v_all.size()) == packed_,
        "AdamW: the whole moments have the packed space's size");
  shard_rank_ = 0;
  shard_ranks_ = 1;
  build_shard();
  m = std::move(m_all);
  v = std::move(v_all);
}

template <typename T>
bool AdamW<T>::in_sync() const {
  if (moment_at_.size() != layout_->tensors.size()) return false;
  for (size_t i = 0; i < moment_at_.size(); i++)
    if ((moment_at_[i] < 0) != layout_->tensors[i].frozen) return false;
  return true;
}

template <typename T>
void AdamW<T>::sync_trainable() {
  if (in_sync()) return;
  if (step > 0) {
    check(moment_at_.size() == layout_->tensors.size(), "AdamW: the layout changed its tensors");
    for (size_t i = 0; i < moment_at_.size(); i++)
      if ((moment_at_[i] < 0) != layout_->tensors[i].frozen)
        fail(
            fmt::format("AdamW: tensor '{}' was {} after training started (step {}); its "
                        "moments would be {}",
                        layout_->tensors[i].name, moment_at_[i] < 0 ? "unfrozen" : "frozen", step,
                        moment_at_[i] < 0 ? "missing" : "dropped"));
  }
  build();
}

// ----------------------------------------------------------------------------
// update

template <typename T>
void AdamW<T>::update(std::span<T> params, std::span<const T> grads, double lr, double grad_scale) {
  sync_trainable();
  check(int64_t(params.size()) == layout_->total && int64_t(grads.size()) == packed_,
        "AdamW: buffer sizes do not match the layout (gradients: the trainable tensors, packed)");
  step++;
  const double bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  const kernels::AdamWStep k{cfg.beta1,
                             cfg.beta2,
                             cfg.eps,
                             lr / bc1,
                             std::sqrt(bc2),
                             grad_scale,
                             1.0 - lr * cfg.weight_decay};
  const auto [lo, hi] = shard_range(shard_rank_);
  check(int64_t(m.size()) == hi - lo && m.size() == v.size(),
        "AdamW: the moments do not match the shard");
  // the shard's parameters only (all of them unsharded); its gradients start at lo
  op_->adamw_update(params.data(), grads.data() + lo, m.data(), v.data(), shard_spans_.data(),
                    int64_t(shard_spans_.size()), k);
}

// ----------------------------------------------------------------------------
// gradient norm and clipping

namespace {

// The packed gradients' size for the layout's frozen set (they hold the trainable tensors alone).
int64_t grad_packed_size(const ParamLayout& layout) {
  int64_t n = 0;
  for (const TensorView& t : layout.tensors) n += t.frozen ? 0 : t.numel;
  return n;
}

}  // namespace

template <typename T>
double grad_global_norm(const ParamLayout& layout, std::span<const T> grads, const Ops<T>& op) {
  check(int64_t(grads.size()) == grad_packed_size(layout),
        "grad_global_norm: the gradients are not packed for the layout's trainable tensors");
  double total = 0;  // tensor after tensor, each in fixed chunks: any thread count, the same bits
  int64_t at = 0;
  for (const TensorView& t : layout.tensors) {
    if (t.frozen) continue;
    total = op.sumsq(grads.data() + at, t.numel, total);
    at += t.numel;
  }
  return std::sqrt(total);
}

template <typename T>
double grad_clip_global_norm(const ParamLayout& layout, std::span<T> grads, double max_norm,
                             const Ops<T>& op) {
  const double norm = grad_global_norm<T>(layout, grads, op);
  const T scale = T(grad_clip_scale(norm, max_norm));
  if (scale == T(1)) return norm;
  int64_t at = 0;
  for (const TensorView& t : layout.tensors) {
    if (t.frozen) continue;
    op.scale(grads.data() + at, scale, 1, t.numel, t.numel);
    at += t.numel;
  }
  return norm;
}

template class AdamW<float>;
template class AdamW<double>;
template double grad_global_norm(const ParamLayout&, std::span<const float>, const Ops<float>&);
template double grad_global_norm(const ParamLayout&, std::span<const double>, const Ops<double>&);
template double grad_clip_global_norm(const ParamLayout&, std::span<float>, double,
                                      const Ops<float>&);
template double grad_clip_global_norm(const ParamLayout&, std::span<double>, double,
                                      const Ops<double>&);

}  // namespace moelab
