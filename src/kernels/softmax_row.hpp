#pragma once
// One row of a softmax: its maximum and the sum of exp(z - max). Shared by cross_entropy and
// logsumexp, so that the training loss, evaluation and the server compute it one way.
#include <algorithm>
#include <cstdint>

#include "kernels/vmath.hpp"

namespace moelab::kernels {

template <typename T>
inline T softmax_row_max(const T* z, int64_t V) {
  T mx = z[0];
#pragma omp simd reduction(max : mx)
  for (int64_t v = 1; v < V; v++) mx = std::max(mx, z[v]);
  return mx;
}

// sum_v exp(z_v - mx), each exponential in T, accumulated in Acc (T, or double)
template <typename Acc, typename T>
inline Acc softmax_row_expsum(const T* z, int64_t V, T mx) {
  Acc sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t v = 0; v < V; v++) sum += Acc(fexp(z[v] - mx));
  return sum;
}

}  // namespace moelab::kernels
