#include "kernels/gemm.hpp"

#include <cblas.h>
#if MOELAB_GEMM_ONEDNN
#include <dnnl.h>
#endif

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "kernels/parallel.hpp"

namespace moelab {

namespace {
CBLAS_TRANSPOSE cblas_op(Trans t) {
  return t == Trans::T ? CblasTrans : CblasNoTrans;
}
// C [1,N] = alpha a [1,K] op(B) + beta C: the one-row products of decoding, as one pass over B.
// oneDNN and OpenBLAS run a one-row sgemm through their packing GEMM, which reads the weights
// at a fraction of the memory bandwidth that a plain pass reaches. Each output sums over k in
// order, whatever the thread count.
void gemv_row(Trans tb, int64_t N, int64_t K, float alpha, const float* a, const float* B,
              int64_t ldb, float beta, float* C) {
  if (tb == Trans::T) {  // B [N,K]: C[n] = alpha dot(a, B[n,:]) + beta C[n]
#pragma omp parallel for schedule(static) if (parallel_worth(N * K))
    for (int64_t n = 0; n < N; n++) {
      const float* row = B + n * ldb;
      float sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < K; k++) {
        sum += a[k] * row[k];
      }
      C[n] = alpha * sum + (beta == 0.f ? 0.f : beta * C[n]);
    }
    return;
  }
  // B [K,N]: C = alpha sum_k a[k] B[k,:] + beta C, on blocks of columns
  constexpr int64_t kCols = 256;
  const int64_t blocks = (N + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (parallel_worth(N * K))
  for (int64_t blk = 0; blk < blocks; blk++) {
    const int64_t c0 = blk * kCols, nc = std::min(N, c0 + kCols) - c0;
    float acc[kCols] = {};
    for (int64_t k = 0; k < K; k++) {
      const float ak = a[k];
      const float* row = B + k * ldb + c0;
#pragma omp simd
      for (int64_t j = 0; j < nc; j++) {
        acc[j] += ak * row[j];
      }
    }
    for (int64_t j = 0; j < nc; j++) {
      C[c0 + j] = alpha * acc[j] + (beta == 0.f ? 0.f : beta * C[c0 + j]);
    }
  }
}

}  // namespace

template <>
void gemm<float>(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (M == 1 && K > 0) {
    if (ta == Trans::N || lda == 1) {
      gemv_row(tb, N, K, alpha, A, B, ldb, beta, C);
      return;
    }
    std::vector<float> row(static_cast<size_t>(K));  // [K] a strided column of A, made contiguous
    for (int64_t k = 0; k < K; k++) {
      row[size_t(k)] = A[k * lda];
    }
    gemv_row(tb, N, K, alpha, row.data(), B, ldb, beta, C);
    return;
  }
#if MOELAB_GEMM_ONEDNN
  // oneDNN's sgemm is row-major and reaches 330-440 GFLOP/s on the model's shapes here, where
  // OpenBLAS 0.3.21 under OPENBLAS_CORETYPE=Haswell gives 150-200 (docs/benchmarks.md, "GEMM
  // library, by measurement").
  const dnnl_status_t st = dnnl_sgemm(ta == Trans::T ? 'T' : 'N', tb == Trans::T ? 'T' : 'N', M, N,
                                      K, alpha, A, lda, B, ldb, beta, C, ldc);
  check(st == dnnl_success, "dnnl_sgemm failed");
#else
  cblas_sgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), int(M), int(N), int(K), alpha, A, int(lda),
              B, int(ldb), beta, C, int(ldc));
#endif
}

template <>
void gemm<double>(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, cblas_op(ta), cblas_op(tb), int(M), int(N), int(K), alpha, A, int(lda),
              B, int(ldb), beta, C, int(ldc));
}

}  // namespace moelab
