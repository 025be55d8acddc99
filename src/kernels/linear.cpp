#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/gemm.hpp"
#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

namespace {

// db [O] += column sums of dout [N,O], in a fixed row order per column block (deterministic
// for any thread count).
template <typename T>
void colsum_add(T* db, const T* dout, int64_t N, int64_t O) {
  constexpr int64_t kCols = 64;
  const int64_t blocks = (O + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (parallel_worth(N * O))
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t c0 = b * kCols, c1 = std::min(O, c0 + kCols);
    T acc[kCols] = {};
    for (int64_t n = 0; n < N; n++) {
      const T* row = dout + n * O;
      for (int64_t c = c0; c < c1; c++) acc[c - c0] += row[c];
    }
    for (int64_t c = c0; c < c1; c++) db[c] += acc[c - c0];
  }
}

}  // namespace

template <typename T>
void linear<T>::forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O,
                        WLayout layout, Precision p) {
  if (N == 0) return;
  if (b) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * O))
    for (int64_t n = 0; n < N; n++) std::memcpy(out + n * O, b, O * sizeof(T));
  }
  const T beta = b ? T(1) : T(0);
  if (layout == WLayout::OutIn)
    gemm_linear<T>(p, Trans::N, Trans::T, N, O, I, x, I, W, I, beta, out, O);
  else
    gemm_linear<T>(p, Trans::N, Trans::N, N, O, I, x, I, W, O, beta, out, O);
}

template <typename T>
void linear<T>::backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N,
                         int64_t I, int64_t O, WLayout layout, bool dx_accumulate, Precision p) {
  if (N == 0) return;
  const T beta = dx_accumulate ? T(1) : T(0);
  if (layout == WLayout::OutIn) {
    if (dx) gemm_linear<T>(p, Trans::N, Trans::N, N, I, O, dout, O, W, I, beta, dx, I);
    if (dW) gemm_linear<T>(p, Trans::T, Trans::N, O, I, N, dout, O, x, I, T(1), dW, I);
  } else {
    if (dx && O > I && N >= O) {
      // dout W^T with a wide W: oneDNN's NT kernel scales poorly past one thread here (293 vs
      // 419 GFLOP/s on 2048x256x2048 at two threads), so transpose W once and run NN.
      std::vector<T> wt(size_t(I * O));
      T* w = wt.data();
#pragma omp parallel for schedule(static) if (parallel_worth(I * O))
      for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < I; i++) w[o * I + i] = W[i * O + o];
      gemm_linear<T>(p, Trans::N, Trans::N, N, I, O, dout, O, wt.data(), I, beta, dx, I);
    } else if (dx) {
      gemm_linear<T>(p, Trans::N, Trans::T, N, I, O, dout, O, W, O, beta, dx, I);
    }
    if (dW) gemm_linear<T>(p, Trans::T, Trans::N, I, O, N, x, I, dout, O, T(1), dW, O);
  }
  if (db) colsum_add(db, dout, N, O);
}

template struct linear<float>;
template struct linear<double>;

}  // namespace moelab::kernels
