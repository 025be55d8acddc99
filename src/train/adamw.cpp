#include "train/adamw.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/parallel.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// moments of the trainable tensors

template <typename T>
AdamW<T>::AdamW(const ParamLayout& layout, AdamWConfig c) : cfg(c), layout_(&layout) {
  build();
}

template <typename T>
void AdamW<T>::build() {
  spans_.clear();
  moment_at_.assign(layout_->tensors.size(), -1);
  int64_t n = 0;
  for (size_t i = 0; i < layout_->tensors.size(); i++) {
    const TensorView& t = layout_->tensors[i];
    if (t.frozen) continue;
    moment_at_[i] = n;
    AdamWSpan* last = spans_.empty() ? nullptr : &spans_.back();
    if (last && last->param + last->numel == t.offset && last->decay == t.decay)
      last->numel += t.numel;
    else
      spans_.push_back({t.offset, n, t.numel, t.decay});
    n += t.numel;
  }
  m.assign(size_t(n), T(0));
  v.assign(size_t(n), T(0));
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

namespace {

template <typename T>
struct AdamWStep {
  T b1, b2, eps, step_size, bc2_sqrt, gs;
};

// The update of n consecutive elements; the same expression for every layout of the moments, so
// the bits do not depend on which tensors are frozen or how the work is split.
template <typename T>
inline void adamw_run(T* p, const T* g, T* mt, T* vt, int64_t n, T decay, const AdamWStep<T>& k) {
  for (int64_t i = 0; i < n; i++) {
    const T gi = g[i] * k.gs;
    mt[i] = k.b1 * mt[i] + (T(1) - k.b1) * gi;
    vt[i] = k.b2 * vt[i] + (T(1) - k.b2) * gi * gi;
    p[i] = p[i] * decay - k.step_size * mt[i] / (std::sqrt(vt[i]) / k.bc2_sqrt + k.eps);
  }
}

}  // namespace

template <typename T>
void AdamW<T>::update(std::span<T> params, std::span<const T> grads, double lr, double grad_scale) {
  check(int64_t(params.size()) == layout_->total && int64_t(grads.size()) == layout_->total,
        "AdamW: buffer sizes do not match the layout");
  sync_trainable();
  step++;
  const double bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  const AdamWStep<T> k{T(cfg.beta1), T(cfg.beta2),      T(cfg.eps),
                       T(lr / bc1),  T(std::sqrt(bc2)), T(grad_scale)};
  const T decay = T(1.0 - lr * cfg.weight_decay);
  // One parallel loop over the moments, in fixed chunks that may cross spans: one fork/join per
  // step however many tensors there are (all trainable: the whole buffer, one contiguous range).
  constexpr int64_t kChunk = 1 << 14;
  const int64_t n = int64_t(m.size()), chunks = (n + kChunk - 1) / kChunk;
  const AdamWSpan* spans = spans_.data();
  const AdamWSpan* spans_end = spans + spans_.size();
  T* p = params.data();
  const T* g = grads.data();
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t c = 0; c < chunks; c++) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    const AdamWSpan* s = std::upper_bound(spans, spans_end, lo, [](int64_t at, const AdamWSpan& x) {
      return at < x.moment + x.numel;
    });
    for (int64_t i = lo; i < hi; s++) {
      const int64_t end = std::min(hi, s->moment + s->numel), at = s->param + (i - s->moment);
      adamw_run(p + at, g + at, m.data() + i, v.data() + i, end - i, s->decay ? decay : T(1), k);
      i = end;
    }
  }
}

// ----------------------------------------------------------------------------
// gradient norm and clipping

template <typename T>
double grad_global_norm(const ParamLayout& layout, std::span<const T> grads) {
  constexpr int64_t kChunk = 1 << 16;
  double total = 0;
  for (const TensorView& t : layout.tensors) {
    if (t.frozen) continue;
    const T* g = grads.data() + t.offset;
    const int64_t chunks = (t.numel + kChunk - 1) / kChunk;
    std::vector<double> part(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static) if (parallel_worth(chunks * kChunk))
    for (int64_t c = 0; c < chunks; c++) {
      double s = 0;
      for (int64_t i = c * kChunk; i < std::min(t.numel, (c + 1) * kChunk); i++)
        s += double(g[i]) * double(g[i]);
      part[size_t(c)] = s;
    }
    for (double s : part) total += s;
  }
  return std::sqrt(total);
}

template <typename T>
double grad_clip_global_norm(const ParamLayout& layout, std::span<T> grads, double max_norm) {
  const double norm = grad_global_norm<T>(layout, grads);
  const T scale = T(grad_clip_scale(norm, max_norm));
  if (scale == T(1)) return norm;
  for (const TensorView& t : layout.tensors) {
    if (t.frozen) continue;
    T* g = grads.data() + t.offset;
#pragma omp parallel for schedule(static) if (parallel_worth(t.numel))
    for (int64_t i = 0; i < t.numel; i++) g[i] *= scale;
  }
  return norm;
}

template class AdamW<float>;
template class AdamW<double>;
template double grad_global_norm(const ParamLayout&, std::span<const float>);
template double grad_global_norm(const ParamLayout&, std::span<const double>);
template double grad_clip_global_norm(const ParamLayout&, std::span<float>, double);
template double grad_clip_global_norm(const ParamLayout&, std::span<double>, double);

}  // namespace moelab
