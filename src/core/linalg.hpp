#pragma once
// Dense factorizations in double, from the LAPACK inside the OpenBLAS already linked (a C-callable
// routine compiled once, for every CPU): no C++ templates shared with a prebuilt library, so no
// vector-ABI clash between objects built for different instruction sets.
#include <cstdint>
#include <span>
#include <vector>

namespace moelab {

// A = U diag(S) V^T, thin: k = min(rows, cols), singular values descending.
struct Svd {
  int64_t rows = 0, cols = 0, k = 0;
  std::vector<double> u;         // [rows, k] row-major, orthonormal columns
  std::vector<double> singular;  // [k], descending, >= 0
  std::vector<double> vt;        // [k, cols] row-major, orthonormal rows (V^T)
};

// The thin SVD of A [rows, cols] (row-major) by divide and conquer (LAPACK dgesdd). One-line
// error for bad shapes, a non-finite entry, or a factorization that does not converge.
Svd linalg_svd(std::span<const double> a, int64_t rows, int64_t cols);

}  // namespace moelab
