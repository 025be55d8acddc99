#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

void moe_sort(int32_t* order, int32_t* pos, int64_t* offsets, const int32_t* idx, int64_t N,
              int64_t E, int64_t k) {
  std::fill_n(offsets, E + 1, int64_t(0));
  for (int64_t i = 0; i < N * k; i++) offsets[idx[i] + 1]++;
  for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
  std::vector<int64_t> cursor(offsets, offsets + E);
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < k; j++) {
      const int64_t r = cursor[idx[n * k + j]]++;
      order[r] = int32_t(n);
      pos[n * k + j] = int32_t(r);
    }
}

template <typename T>
void moe_gather<T>::forward(T* xe, const T* x, const MoeRouting& r, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(r.N * r.k * d))
  for (int64_t i = 0; i < r.N * r.k; i++)
    std::memcpy(xe + i * d, x + int64_t(r.order[i]) * d, d * sizeof(T));
}

template <typename T>
void moe_gather<T>::backward(T* dx, const T* dxe, const MoeRouting& r, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(r.N * r.k * d))
  for (int64_t n = 0; n < r.N; n++)
    for (int64_t j = 0; j < r.k; j++) {
      const T* src = dxe + int64_t(r.pos[n * r.k + j]) * d;
      T* dst = dx + n * d;
      for (int64_t c = 0; c < d; c++) dst[c] += src[c];
    }
}

template <typename T>
void moe_combine<T>::forward(T* out, const T* y, const T* w, const MoeRouting& r, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(r.N * r.k * d))
  for (int64_t n = 0; n < r.N; n++) {
    T* o = out + n * d;
    for (int64_t j = 0; j < r.k; j++) {
      const T* src = y + int64_t(r.pos[n * r.k + j]) * d;
      const T wj = w[n * r.k + j];
      if (j == 0)
        for (int64_t c = 0; c < d; c++) o[c] = wj * src[c];
      else
        for (int64_t c = 0; c < d; c++) o[c] += wj * src[c];
    }
  }
}

template <typename T>
void moe_combine<T>::backward(T* dy, T* dw, const T* dout, const T* y, const T* w,
                              const MoeRouting& r, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(r.N * r.k * d))
  for (int64_t n = 0; n < r.N; n++) {
    const T* g = dout + n * d;
    for (int64_t j = 0; j < r.k; j++) {
      const int64_t row = r.pos[n * r.k + j];
      const T wj = w[n * r.k + j];
      const T* yr = y + row * d;
      T* dyr = dy + row * d;
      T s = 0;
      for (int64_t c = 0; c < d; c++) {
        dyr[c] = wj * g[c];
        s += g[c] * yr[c];
      }
      dw[n * r.k + j] = s;
    }
  }
}

template struct moe_gather<float>;
template struct moe_gather<double>;
template struct moe_combine<float>;
template struct moe_combine<double>;

}  // namespace moelab::kernels
