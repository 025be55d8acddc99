#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
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

// Which experts each thread maps when the experts run side by side, or nothing when they should
// run one after another. Longest first onto the least loaded thread; side by side only if the
// most loaded thread gets at most kSlack times an even share of the rows (a few hundred rows per
// GEMM lose 10-30% to splitting one product over two threads, so a small imbalance still pays).
// Small work stays in order, as every kernel's parallel_worth decides.
std::vector<std::vector<int64_t>> grouped_plan(const int64_t* offsets, int64_t E,
                                               int64_t row_work) {
  constexpr double kSlack = 1.15;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads < 2 || E < 2 || !parallel_worth((offsets[E] - offsets[0]) * row_work)) {
    return {};
  }
  std::vector<int64_t> order(static_cast<size_t>(E));  // [E] experts, most rows first
  std::iota(order.begin(), order.end(), int64_t(0));
  auto rows = [&](int64_t e) { return offsets[e + 1] - offsets[e]; };
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return rows(a) > rows(b); });
  std::vector<std::vector<int64_t>> plan(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);  // [threads] rows given to each
  for (int64_t e : order) {
    const size_t t = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    plan[t].push_back(e);
    load[t] += rows(e);
  }
  const int64_t total = offsets[E] - offsets[0];
  const int64_t most = *std::max_element(load.begin(), load.end());
  if (total == 0 || double(most) > kSlack * double(total) / double(threads)) {
    return {};
  }
  return plan;
}

// body(e) for every expert: side by side on the threads of the plan, or in order.
template <typename F>
void grouped_run(const int64_t* offsets, int64_t E, int64_t row_work, F&& body) {
  const std::vector<std::vector<int64_t>> plan = grouped_plan(offsets, E, row_work);
  if (plan.empty()) {
    for (int64_t e = 0; e < E; e++) {
      body(e);
    }
    return;
  }
#pragma omp parallel num_threads(int(plan.size()))
  {
    for (int64_t e : plan[size_t(omp_get_thread_num())]) {
      body(e);
    }
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

namespace {

// dx [N,I] (= or += with beta 1) = dout W (OutIn) or dout W^T (InOut)
template <typename T>
void linear_backward_dx(T* dx, const T* dout, const T* W, int64_t N, int64_t I, int64_t O,
                        WLayout layout, T beta, Precision p) {
  if (layout == WLayout::OutIn) {
    gemm_linear<T>(p, Trans::N, Trans::N, N, I, O, dout, O, W, I, beta, dx, I);
    return;
  }
  if (O > I && N >= O) {
    // dout W^T with a wide W: oneDNN's NT kernel scales poorly past one thread here (293 vs
    // 419 GFLOP/s on 2048x256x2048 at two threads), so transpose W once and run NN.
    std::vector<T> wt(size_t(I * O));  // [O, I]
    T* w = wt.data();
#pragma omp parallel for schedule(static) if (parallel_worth(I * O))
    for (int64_t o = 0; o < O; o++) {
      for (int64_t i = 0; i < I; i++) {
        w[o * I + i] = W[i * O + o];
      }
    }
    gemm_linear<T>(p, Trans::N, Trans::N, N, I, O, dout, O, wt.data(), I, beta, dx, I);
    return;
  }
  gemm_linear<T>(p, Trans::N, Trans::T, N, I, O, dout, O, W, O, beta, dx, I);
}

// dW += dout^T x (OutIn, [O,I]) or x^T dout (InOut, [I,O]); db [O] += column sums of dout
template <typename T>
void linear_backward_dw(T* dW, T* db, const T* dout, const T* x, int64_t N, int64_t I, int64_t O,
                        WLayout layout, Precision p) {
  if (dW && layout == WLayout::OutIn) {
    gemm_linear<T>(p, Trans::T, Trans::N, O, I, N, dout, O, x, I, T(1), dW, I);
  } else if (dW) {
    gemm_linear<T>(p, Trans::T, Trans::N, I, O, N, x, I, dout, O, T(1), dW, O);
  }
  if (db) {
    colsum_add(db, dout, N, O);
  }
}

// Whether dx and dW run side by side, one thread each. They cost the same (2 N I O FLOPs each),
// and on two threads one product per thread beats each product split over both (no partition
// of a few-hundred-wide matrix, no barrier per product). With more threads each product needs
// several, and oneDNN runs single-threaded inside a parallel region, so they run in turn.
bool linear_backward_side_by_side(bool dx, bool dW, int64_t work) {
  return dx && dW && parallel_worth(work) && !omp_in_parallel() && omp_get_max_threads() == 2;
}

}  // namespace

template <typename T>
void linear<T>::backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N,
                         int64_t I, int64_t O, WLayout layout, bool dx_accumulate, Precision p) {
  if (N == 0) {
    return;
  }
  const T beta = dx_accumulate ? T(1) : T(0);
  if (linear_backward_side_by_side(dx != nullptr, dW != nullptr, N * I * O)) {
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 0) {
        linear_backward_dx(dx, dout, W, N, I, O, layout, beta, p);
      } else {
        linear_backward_dw(dW, db, dout, x, N, I, O, layout, p);
      }
    }
    return;
  }
  if (dx) {
    linear_backward_dx(dx, dout, W, N, I, O, layout, beta, p);
  }
  linear_backward_dw(dW, db, dout, x, N, I, O, layout, p);
}

template <typename T>
void linear_grouped<T>::forward(T* out, const T* x, const T* W, const T* b, const int64_t* offsets,
                                int64_t E, int64_t I, int64_t O, WLayout layout, Precision p) {
  grouped_run(offsets, E, I * O, [&](int64_t e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    linear<T>::forward(out + r0 * O, x + r0 * I, W + e * I * O, b ? b + e * O : nullptr, n, I, O,
                       layout, p);
  });
}

template <typename T>
void linear_grouped<T>::backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W,
                                 const int64_t* offsets, int64_t E, int64_t I, int64_t O,
                                 WLayout layout, bool dx_accumulate, Precision p) {
  grouped_run(offsets, E, I * O, [&](int64_t e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    linear<T>::backward(dx ? dx + r0 * I : nullptr, dW ? dW + e * I * O : nullptr,
                        db ? db + e * O : nullptr, dout + r0 * O, x + r0 * I, W + e * I * O, n, I,
                        O, layout, dx_accumulate, p);
  });
}

template struct linear<float>;
template struct linear<double>;
template struct linear_grouped<float>;
template struct linear_grouped<double>;

}  // namespace moelab::kernels
