#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"
#include "kernels/vmath.hpp"

namespace moelab::kernels {

namespace {
// A limit <= 0 turns the clamps off (a plain x*sigmoid(alpha x)*(l+1) gate, for ablations).
inline double clamp_limit(double limit) {
  return limit > 0 ? limit : std::numeric_limits<double>::infinity();
}
}  // namespace

template <typename T>
void swiglu<T>::forward(T* out, const T* h, int64_t N, int64_t I, double limit, double alpha) {
  const T L = T(clamp_limit(limit)), a = T(alpha);
#pragma omp parallel for schedule(static) if (parallel_worth(N * I))
  for (int64_t n = 0; n < N; n++) {
    const T* hr = h + n * 2 * I;
    T* o = out + n * I;
    for (int64_t j = 0; j < I; j++) {
      const T g = std::min(hr[2 * j], L);
      const T l = std::clamp(hr[2 * j + 1], -L, L);
      o[j] = g / (T(1) + fexp(-a * g)) * (l + T(1));
    }
  }
}

template <typename T>
void swiglu<T>::backward(T* dh, const T* dout, const T* h, int64_t N, int64_t I, double limit,
                         double alpha) {
  // Clamp gradients pass where the input lies inside the closed interval, as torch.clamp does.
  const T L = T(clamp_limit(limit)), a = T(alpha);
#pragma omp parallel for schedule(static) if (parallel_worth(N * I))
  for (int64_t n = 0; n < N; n++) {
    const T* hr = h + n * 2 * I;
    const T* dy = dout + n * I;
    T* d = dh + n * 2 * I;
    for (int64_t j = 0; j < I; j++) {
      const T graw = hr[2 * j], lraw = hr[2 * j + 1];
      const T g = std::min(graw, L), l = std::clamp(lraw, -L, L);
      const T sig = T(1) / (T(1) + fexp(-a * g));
      const T dg = dy[j] * (l + T(1)) * (sig + a * g * sig * (T(1) - sig));
      d[2 * j] = graw <= L ? dg : T(0);
      d[2 * j + 1] = (lraw >= -L && lraw <= L) ? dy[j] * g * sig : T(0);
    }
  }
}

template struct swiglu<float>;
template struct swiglu<double>;

}  // namespace moelab::kernels
