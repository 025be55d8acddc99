#include <algorithm>
#include <limits>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"
#include "kernels/softmax_row.hpp"

namespace moelab::kernels {

template <typename T>
void logsumexp<T>::forward(T* mx, double* sum, const T* z, int64_t N, int64_t V, bool sum_double) {
#pragma omp parallel for schedule(static) if (N > 1 && parallel_worth(N * V))
  for (int64_t n = 0; n < N; n++) {
    const T* row = z + n * V;
    mx[n] = softmax_row_max(row, V);
    sum[n] = sum_double ? softmax_row_expsum<double>(row, V, mx[n])
                        : double(softmax_row_expsum<T>(row, V, mx[n]));
  }
}

template <typename T>
void argmax<T>::forward(int32_t* idx, const T* z, int64_t N, int64_t V, int64_t stride) {
  // Rows in parallel only where a row set is large (a decoder step over a batch); one row is
  // one vectorised pass.
#pragma omp parallel for schedule(static) if (N > 1 && N * V >= (int64_t(1) << 17))
  for (int64_t n = 0; n < N; n++) {
    const T* row = z + n * stride;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t v = 0; v < V; v++) mx = std::max(mx, row[v]);
    idx[n] = 0;  // all NaN
    for (int64_t v = 0; v < V; v++) {
      if (row[v] == mx) {
        idx[n] = int32_t(v);
        break;
      }
    }
  }
}

template struct logsumexp<float>;
template struct logsumexp<double>;
template struct argmax<float>;
template struct argmax<double>;

}  // namespace moelab::kernels
