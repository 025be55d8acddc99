#include <algorithm>
#include <cstring>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void embedding<T>::forward(T* out, const int32_t* tok, const T* W, int64_t N, int64_t d) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t n = 0; n < N; n++) std::memcpy(out + n * d, W + int64_t(tok[n]) * d, d * sizeof(T));
}

template <typename T>
void embedding<T>::backward(T* dW, const T* dout, const int32_t* tok, int64_t N, int64_t d) {
  // Threads own column blocks and walk the tokens in order: a deterministic scatter-add.
  constexpr int64_t kCols = 32;
  const int64_t blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (parallel_worth(N * d))
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t c0 = b * kCols, c1 = std::min(d, c0 + kCols);
    for (int64_t n = 0; n < N; n++) {
      T* dst = dW + int64_t(tok[n]) * d;
      const T* src = dout + n * d;
      for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
    }
  }
}

template struct embedding<float>;
template struct embedding<double>;

}  // namespace moelab::kernels
