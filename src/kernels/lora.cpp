#include <algorithm>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

// In the InOut layout [I,O] the row o of B A is a column of the stored matrix.
template <typename T>
void lora<T>::merge(T* W, const T* A, const T* B, const LowRank& s) {
  const int64_t I = s.I, O = s.O, R = s.R;
#pragma omp parallel if (parallel_worth(s.out_n * I * R))
  {
    std::vector<double> row(static_cast<size_t>(I));  // [I] one row of scale * B A
#pragma omp for schedule(static)
    for (int64_t o = 0; o < s.out_n; o++) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t k = 0; k < R; k++) {
        const double b = s.scale * double(B[o * R + k]);
        const T* a = A + k * I;
        for (int64_t i = 0; i < I; i++) row[size_t(i)] += b * double(a[i]);
      }
      const int64_t col = s.out0 + o;
      if (s.layout == WLayout::OutIn) {
        T* dst = W + col * I;
        for (int64_t i = 0; i < I; i++) dst[i] = T(double(dst[i]) + row[size_t(i)]);
      } else {
        for (int64_t i = 0; i < I; i++) W[i * O + col] = T(double(W[i * O + col]) + row[size_t(i)]);
      }
    }
  }
}

template <typename T>
void lora<T>::expand(T* W, const T* A, const T* B, const LowRank& s) {
  const int64_t I = s.I, O = s.O, R = s.R;
  for (int64_t i = 0; i < I; i++)
    for (int64_t o = 0; o < s.out_n; o++) {
      double acc = 0;
      for (int64_t r = 0; r < R; r++) acc += double(A[r * I + i]) * double(B[o * R + r]);
      const int64_t at = s.layout == WLayout::InOut ? i * O + s.out0 + o : (s.out0 + o) * I + i;
      W[at] += T(s.scale * acc);
    }
}

template struct lora<float>;
template struct lora<double>;

}  // namespace moelab::kernels
