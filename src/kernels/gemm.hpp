#pragma once
// The one matrix-product interface. Row-major, BLAS semantics:
//   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
// where op(X) is X or X^T. Float goes to oneDNN (or OpenBLAS, -DMOELAB_GEMM=openblas); double to
// OpenBLAS: it exists so that the whole model can run in double for finite-difference checks.
// Both libraries are OpenMP builds and share moelab's one thread pool (core/threads.hpp).
#include <cstdint>

namespace moelab {

enum class Trans : bool { N = false, T = true };

template <typename T>
void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The products of the linear layers (weights x activations) in fp32 (default, exact) or bf16
// (AVX512-BF16 dot products with fp32 accumulation; operands rounded to bf16 per call, master
// weights stay fp32). Attention, losses and the optimizer are fp32 either way.
enum class Precision { F32, BF16 };

// gemm with alpha = 1 at precision p (float only; double is always exact).
template <typename T>
void gemm_linear(Precision p, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const T* A,
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// The bf16 product itself; beta must be 0 or 1.
void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// "onednn" or "openblas": the library behind gemm<float> (gemm<double> is always OpenBLAS).
const char* gemm_backend();

}  // namespace moelab
