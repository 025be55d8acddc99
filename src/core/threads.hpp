#pragma once
// The one thread pool: OpenMP's, which the OpenMP builds of OpenBLAS and oneDNN also follow.

namespace moelab {

// Sets the OpenMP thread count and OpenBLAS's with it.
void threads_set(int n);
// The thread count a parallel region gets.
int threads_get();

}  // namespace moelab
