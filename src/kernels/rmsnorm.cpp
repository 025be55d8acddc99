#include <algorithm>
#include <cmath>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void rmsnorm<T>::forward(T* out, T* rstd, const T* x, const T* g, int64_t N, int64_t d,
                         double eps) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t n = 0; n < N; n++) {
    const T* xr = x + n * d;
    T* o = out + n * d;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; i++) ss += xr[i] * xr[i];
    const T r = T(1) / std::sqrt(ss / T(d) + T(eps));
    rstd[n] = r;
    for (int64_t i = 0; i < d; i++) o[i] = xr[i] * r * g[i];
  }
}

template <typename T>
void rmsnorm<T>::backward(T* dx, T* dg, const T* dout, const T* x, const T* g, const T* rstd,
                          int64_t N, int64_t d) {
  // dx_j = r * (g_j dy_j - x_j r^2 mean_i(g_i dy_i x_i))
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t n = 0; n < N; n++) {
    const T *xr = x + n * d, *dy = dout + n * d;
    T* dxr = dx + n * d;
    const T r = rstd[n];
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < d; i++) dot += g[i] * dy[i] * xr[i];
    const T c = r * r * dot / T(d);
    for (int64_t i = 0; i < d; i++) dxr[i] += r * (g[i] * dy[i] - xr[i] * c);
  }
  if (!dg) return;
  // dg_i += sum_n dy_ni x_ni r_n, reduced over rows in a fixed order per column block.
  constexpr int64_t kCols = 32;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t c0 = b * kCols, c1 = std::min(d, c0 + kCols);
    T acc[kCols] = {};
    for (int64_t n = 0; n < N; n++) {
      const T r = rstd[n];
      const T *xr = x + n * d, *dy = dout + n * d;
      for (int64_t c = c0; c < c1; c++) acc[c - c0] += dy[c] * xr[c] * r;
    }
    for (int64_t c = c0; c < c1; c++) dg[c] += acc[c - c0];
  }
}

template struct rmsnorm<float>;
template struct rmsnorm<double>;

}  // namespace moelab::kernels
