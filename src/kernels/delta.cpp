#include <algorithm>
#include <cmath>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void delta_sparse<T>::forward(T* W, const T* base, const int32_t* pos, const T* v, int64_t n,
                              int64_t nnz) {
  std::copy_n(base, n, W);
  for (int64_t j = 0; j < nnz; j++) W[pos[j]] += v[j];
}

template <typename T>
void delta_sparse<T>::backward(T* dv, const T* dW, const int32_t* pos, int64_t nnz) {
  for (int64_t j = 0; j < nnz; j++) dv[j] += dW[pos[j]];
}

template <typename T>
void delta_sparse<T>::add(T* out, const T* x, const int32_t* pos, const T* v, int64_t N, int64_t I,
                          int64_t O, int64_t nnz) {
  // Row by row (the row of out and of x stay in cache); the positions are sorted, so the input
  // index i = pos / O only grows along them and needs no division.
#pragma omp parallel for schedule(static) if (parallel_worth(N * nnz))
  for (int64_t n = 0; n < N; n++) {
    T* y = out + n * O;
    const T* xn = x + n * I;
    int64_t i = 0, row = 0;  // row = i * O
    for (int64_t j = 0; j < nnz; j++) {
      while (pos[j] >= row + O) i++, row += O;
      y[pos[j] - row] += v[j] * xn[i];
    }
  }
}

template <typename T>
void delta_quant<T>::forward(T* W, const T* base, const int8_t* codes, const T* s, int64_t I,
                             int64_t O) {
#pragma omp parallel for schedule(static) if (parallel_worth(I * O))
  for (int64_t i = 0; i < I; i++)
    for (int64_t o = 0; o < O; o++) W[i * O + o] = base[i * O + o] + s[o] * T(codes[i * O + o]);
}

template <typename T>
void delta_quant<T>::encode(int8_t* codes, const T* delta, const T* s, int64_t I, int64_t O,
                            int64_t bits) {
  const double bound = double(bits == 1 ? 1 : (int64_t(1) << (bits - 1)) - 1);
#pragma omp parallel for schedule(static) if (parallel_worth(I * O))
  for (int64_t i = 0; i < I; i++) {
    for (int64_t o = 0; o < O; o++) {
      const double d = double(delta[i * O + o]), so = double(s[o]);
      double c = 0.0;
      if (bits == 1)
        c = d >= 0.0 ? 1.0 : -1.0;  // sign; 0 (and -0) maps to +1
      else if (so > 0.0)
        c = std::clamp(std::round(d / so), -bound, bound);
      codes[i * O + o] = int8_t(c);
    }
  }
}

template struct delta_sparse<float>;
template struct delta_sparse<double>;
template struct delta_quant<float>;
template struct delta_quant<double>;

}  // namespace moelab::kernels
