#include "train/collective.hpp"

namespace moelab {

namespace {
Collective* g_collective = nullptr;
}

void train_set_collective(Collective* c) {
  g_collective = c;
}
Collective* train_collective() {
  return g_collective;
}
bool train_writer() {
  return !g_collective || g_collective->rank() == 0;
}

void train_barrier() {
  if (!g_collective) return;
  int64_t none = 0;
  g_collective->sum(std::span<int64_t>(&none, 1));
}

}  // namespace moelab
