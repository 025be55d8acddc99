#pragma once
// When a loop is worth an OpenMP parallel region: below this much work the fork/join costs
// more than it saves (and tiny models would spend their time waking threads). A variable, not
// a constant, so that tests can force the parallel paths on small shapes.
#include <cstdint>

namespace moelab {

inline int64_t parallel_min_work = int64_t(1) << 15;
inline bool parallel_worth(int64_t work) {
  return work >= parallel_min_work;
}

}  // namespace moelab
