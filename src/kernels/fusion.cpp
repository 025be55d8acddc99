#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void fusion<T>::forward(T* out, const T* F, const T* M, const T* a, int64_t a_stride, int64_t N,
                        int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t n = 0; n < N; n++) {
    const T an = a[n * a_stride], bn = T(1) - an;
    for (int64_t j = 0; j < d; j++) out[n * d + j] = bn * F[n * d + j] + an * M[n * d + j];
  }
}

template <typename T>
void fusion<T>::backward(T* dF, T* dM, T* da, const T* dout, const T* F, const T* M, const T* a,
                         int64_t a_stride, int64_t N, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t n = 0; n < N; n++) {
    const T an = a[n * a_stride], bn = T(1) - an;
    T s = 0;
    for (int64_t j = 0; j < d; j++) {
      const T g = dout[n * d + j];
      dF[n * d + j] = bn * g;
      dM[n * d + j] = an * g;
      s += g * (M[n * d + j] - F[n * d + j]);
    }
    if (da) da[n] = s;
  }
}

template struct fusion<float>;
template struct fusion<double>;

}  // namespace moelab::kernels
