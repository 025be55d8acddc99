#pragma once
// OpenMP for the kernels and for the layers above them (which have no pragmas of their own). When
// a loop is worth an OpenMP parallel region: below this much work the fork/join costs more than it
// saves (and tiny models would spend their time waking threads). A variable, not a constant, so
// that tests can force the parallel paths on small shapes.
#include <cstdint>

namespace moelab {

inline int64_t parallel_min_work = int64_t(1) << 15;
inline bool parallel_worth(int64_t work) {
  return work >= parallel_min_work;
}

// body(i) for every i in [0, n) on the OpenMP threads, `chunk` iterations at a time handed out
// as threads free up (tasks of uneven cost: fits from many starts, experts' SVDs, rows of logits
// to visit); on the calling thread in order when !parallel. An OpenMP loop on purpose: inside a
// task, the OpenMP kernels and OpenBLAS run on one thread, so that a task's result does not depend
// on the thread count (compress's per-expert SVDs). Not
// for arithmetic over arrays: that is an op of the device's table (backend/device.hpp). The body
// must not throw: carry errors out of it.
template <typename F>
void parallel_for(int64_t n, int64_t chunk, bool parallel, F&& body) {
#pragma omp parallel for schedule(dynamic, chunk) if (parallel)
  for (int64_t i = 0; i < n; i++) body(i);
}

}  // namespace moelab
