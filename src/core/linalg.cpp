#include "core/linalg.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "core/error.hpp"

// LAPACK's Fortran interface (OpenBLAS exports it; Debian's build takes 32-bit integers). The
// trailing length is the hidden length of the character argument that gfortran passes.
extern "C" void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                        double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                        double* work, const int* lwork, int* iwork, int* info, size_t jobz_len);

namespace moelab {

// Row-major A [rows, cols] is column-major A^T [cols, rows]. LAPACK factors A^T = U' S V'^T, so
// A = V' S U'^T: A's U is V' (whose column-major V'^T [k, rows] is row-major [rows, k]) and A's
// V^T is U'^T (U' column-major [cols, k] is row-major [k, cols]). No transposes needed.
Svd linalg_svd(std::span<const double> a, int64_t rows, int64_t cols) {
  check(rows >= 1 && cols >= 1 && int64_t(a.size()) == rows * cols,
        "linalg_svd: a must be [rows, cols]");
  if (rows > INT_MAX || cols > INT_MAX || rows * cols > INT_MAX)
    fail(fmt::format("linalg_svd: a {} x {} matrix is beyond LAPACK's 32-bit sizes", rows, cols));
  for (double x : a) {
    if (!std::isfinite(x)) fail("linalg_svd: the matrix has a non-finite entry");
  }
  Svd out;
  out.rows = rows;
  out.cols = cols;
  out.k = std::min(rows, cols);
  const int m = int(cols), n = int(rows), k = int(out.k);
  std::vector<double> work_a(a.begin(), a.end());  // [cols, rows] column-major; destroyed
  out.singular.resize(size_t(k));
  out.vt.resize(size_t(cols) * size_t(k));  // LAPACK's U' [cols, k] column-major
  out.u.resize(size_t(k) * size_t(rows));   // LAPACK's V'^T [k, rows] column-major
  std::vector<int> iwork(size_t(8) * size_t(k));
  const char jobz = 'S';
  int info = 0;
  int lwork = -1;
  double query = 0;
  dgesdd_(&jobz, &m, &n, work_a.data(), &m, out.singular.data(), out.vt.data(), &m, out.u.data(),
          &k, &query, &lwork, iwork.data(), &info, 1);
  check(info == 0, "linalg_svd: dgesdd workspace query failed");
  if (query + 1.0 > double(INT_MAX))
    fail(fmt::format("linalg_svd: a {} x {} matrix needs a workspace beyond LAPACK's 32-bit sizes",
                     rows, cols));
  lwork = int(query + 1.0);
  std::vector<double> work(static_cast<size_t>(lwork));
  dgesdd_(&jobz, &m, &n, work_a.data(), &m, out.singular.data(), out.vt.data(), &m, out.u.data(),
          &k, work.data(), &lwork, iwork.data(), &info, 1);
  check(info >= 0, "linalg_svd: dgesdd was given a bad argument");
  if (info > 0)
    fail(fmt::format("linalg_svd: the SVD of a {} x {} matrix did not converge", rows, cols));
  return out;
}

}  // namespace moelab
