#include <algorithm>
#include <cmath>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

namespace {

template <typename T>
struct StepT {
  T b1, b2, eps, step_size, bc2_sqrt, gs;
};

// The update of n consecutive elements; the same expression for every layout of the moments, so
// the bits do not depend on which tensors are frozen or how the work is split.
template <typename T>
inline void adamw_run(T* p, const T* g, T* mt, T* vt, int64_t n, T decay, const StepT<T>& k) {
  for (int64_t i = 0; i < n; i++) {
    const T gi = g[i] * k.gs;
    mt[i] = k.b1 * mt[i] + (T(1) - k.b1) * gi;
    vt[i] = k.b2 * vt[i] + (T(1) - k.b2) * gi * gi;
    p[i] = p[i] * decay - k.step_size * mt[i] / (std::sqrt(vt[i]) / k.bc2_sqrt + k.eps);
  }
}

}  // namespace

template <typename T>
void adamw<T>::update(T* p, const T* g, T* m, T* v, const AdamWSpan* spans, int64_t n_spans,
                      const AdamWStep& step) {
  if (n_spans == 0) return;
  const StepT<T> k{T(step.beta1),     T(step.beta2),    T(step.eps),
                   T(step.step_size), T(step.bc2_sqrt), T(step.grad_scale)};
  const T decay = T(step.decay);
  // One parallel loop over the moments, in fixed chunks that may cross spans: one fork/join per
  // step however many tensors there are.
  constexpr int64_t kChunk = 1 << 14;
  const AdamWSpan* spans_end = spans + n_spans;
  const int64_t n = spans_end[-1].moment + spans_end[-1].numel, chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t c = 0; c < chunks; c++) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    const AdamWSpan* s = std::upper_bound(spans, spans_end, lo, [](int64_t at, const AdamWSpan& x) {
      return at < x.moment + x.numel;
    });
    for (int64_t i = lo; i < hi; s++) {
      const int64_t end = std::min(hi, s->moment + s->numel), at = s->param + (i - s->moment);
      adamw_run(p + at, g + i, m + i, v + i, end - i, s->decay ? decay : T(1), k);
      i = end;
    }
  }
}

template struct adamw<float>;
template struct adamw<double>;

}  // namespace moelab::kernels
