#include "kernels/gemm.hpp"

#include <cblas.h>
#if MOELAB_GEMM_ONEDNN
#include <dnnl.h>
#endif

#include "core/error.hpp"

namespace moelab {

namespace {
CBLAS_TRANSPOSE cblas_op(Trans t) {
  return t == Trans::T ? CblasTrans : CblasNoTrans;
}
}  // namespace

template <>
void gemm<float>(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
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
