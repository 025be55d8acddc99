#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.hpp"
#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
double vec<T>::sumsq(const T* x, int64_t n, double acc) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(size_t(chunks), 0.0);  // [chunks]
#pragma omp parallel for schedule(static) if (parallel_worth(chunks * kChunk))
  for (int64_t c = 0; c < chunks; c++) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); i++)
      s += double(x[i]) * double(x[i]);
    part[size_t(c)] = s;
  }
  for (double s : part) acc += s;
  return acc;
}

template <typename T>
double vec<T>::sum(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += double(x[i]);
  return s;
}

template <typename T>
void vec<T>::scale(T* x, T s, int64_t rows, int64_t cols, int64_t stride) {
  if (cols == stride) {  // contiguous: one flat loop
    const int64_t n = rows * cols;
#pragma omp parallel for schedule(static) if (parallel_worth(n))
    for (int64_t i = 0; i < n; i++) x[i] *= s;
    return;
  }
#pragma omp parallel for schedule(static) if (parallel_worth(rows * cols))
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) x[r * stride + j] *= s;
}

template <typename T>
void vec<T>::fill(T* x, T value, int64_t n) {
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; i++) x[i] = value;
}

template <typename T>
void vec<T>::fill_normal(T* x, int64_t n, double sd, uint64_t seed, uint64_t stream) {
#pragma omp parallel for schedule(static) if (parallel_worth(n))
  for (int64_t i = 0; i < n; i++) x[i] = T(sd * rng_normal(seed, stream, uint64_t(i)));
}

template <typename T>
void vec<T>::gram(double* G, const T* const* x, int64_t V, int64_t n) {
#pragma omp parallel for schedule(dynamic) if (parallel_worth(V * V * n))
  for (int64_t ab = 0; ab < V * V; ab++) {
    const int64_t a = ab / V, b = ab % V;
    if (b < a) continue;
    const T *xa = x[a], *xb = x[b];
    double acc = 0;
    for (int64_t i = 0; i < n; i++) acc += double(xa[i]) * double(xb[i]);
    G[a * V + b] = G[b * V + a] = acc;
  }
}

template <typename T>
void vec<T>::rows_copy(T* dst, const int64_t* dst_at, int64_t dst_step, const T* src,
                       const int64_t* src_at, int64_t m, int64_t cols) {
#pragma omp parallel for schedule(static) if (parallel_worth(m * cols))
  for (int64_t r = 0; r < m; r++) {
    T* out = dst + dst_at[r];
    const T* in = src + src_at[r];
    if (dst_step == 1) {
      std::copy_n(in, cols, out);
    } else {
      for (int64_t c = 0; c < cols; c++) out[c * dst_step] = in[c];
    }
  }
}

template <typename T>
void sigmoid<T>::forward(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = T(1) / (T(1) + std::exp(-x[i]));
}

template <typename T>
void sigmoid<T>::backward(T* dx, const T* dy, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * (y[i] * (T(1) - y[i]));
}

template struct vec<float>;
template struct vec<double>;
template struct sigmoid<float>;
template struct sigmoid<double>;

}  // namespace moelab::kernels
