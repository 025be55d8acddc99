#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"
#include "kernels/softmax_row.hpp"
#include "kernels/vmath.hpp"

namespace moelab::kernels {

template <typename T>
double cross_entropy<T>::forward(T* lse, const T* logits, const int32_t* targets, int64_t N,
                                 int64_t V) {
  std::vector<double> loss(N, 0.0);
#pragma omp parallel for schedule(static) if (parallel_worth(N * V))
  for (int64_t n = 0; n < N; n++) {
    const T* z = logits + n * V;
    const T mx = softmax_row_max(z, V);
    const T sum = softmax_row_expsum<T>(z, V, mx);
    lse[n] = mx + std::log(sum);
    if (targets[n] >= 0) loss[n] = double(lse[n]) - double(z[targets[n]]);
  }
  double total = 0;  // fixed order: the same bits for any thread count
  for (double x : loss) total += x;
  return total;
}

template <typename T>
void cross_entropy<T>::backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                                int64_t N, int64_t V, double scale) {
  const T s = T(scale);
#pragma omp parallel for schedule(static) if (parallel_worth(N * V))
  for (int64_t n = 0; n < N; n++) {
    const T* z = logits + n * V;
    T* d = dlogits + n * V;
    if (targets[n] < 0) {
      std::fill_n(d, V, T(0));
      continue;
    }
    const T L = lse[n];
    for (int64_t v = 0; v < V; v++) d[v] = s * fexp(z[v] - L);
    d[targets[n]] -= s;
  }
}

template struct cross_entropy<float>;
template struct cross_entropy<double>;

}  // namespace moelab::kernels
