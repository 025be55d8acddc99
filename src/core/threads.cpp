#include "core/threads.hpp"

#include <cblas.h>
#include <omp.h>

namespace moelab {

void threads_set(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int threads_get() {
  return omp_get_max_threads();
}

}  // namespace moelab
