#include "train/adamw.hpp"
#include "core/parallel.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace moelab {

template <typename T>
AdamW<T>::AdamW(const ParamLayout& layout, AdamWConfig c)
    : cfg(c), m(size_t(layout.total), T(0)), v(size_t(layout.total), T(0)), layout_(&layout) {}

template <typename T>
void AdamW<T>::update(std::span<T> params, std::span<const T> grads, double lr, double grad_scale) {
  check(int64_t(params.size()) == layout_->total && int64_t(grads.size()) == layout_->total,
        "AdamW: buffer sizes do not match the layout");
  step++;
  const double bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  const T b1 = T(cfg.beta1), b2 = T(cfg.beta2), eps = T(cfg.eps);
  const T step_size = T(lr / bc1), bc2_sqrt = T(std::sqrt(bc2)), gs = T(grad_scale);
  for (const TensorView& t : layout_->tensors) {
    if (t.frozen) continue;
    const T decay = t.decay ? T(1.0 - lr * cfg.weight_decay) : T(1);
    T* p = params.data() + t.offset;
    const T* g = grads.data() + t.offset;
    T* mt = m.data() + t.offset;
    T* vt = v.data() + t.offset;
#pragma omp parallel for schedule(static) if (parallel_worth(t.numel))
    for (int64_t i = 0; i < t.numel; i++) {
      const T gi = g[i] * gs;
      mt[i] = b1 * mt[i] + (T(1) - b1) * gi;
      vt[i] = b2 * vt[i] + (T(1) - b2) * gi * gi;
      p[i] = p[i] * decay - step_size * mt[i] / (std::sqrt(vt[i]) / bc2_sqrt + eps);
    }
  }
}

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
