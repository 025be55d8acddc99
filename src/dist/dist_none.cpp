// Built without MPI: one process, and a clear refusal when a launcher started several.
#include <fmt/format.h>

#include <cstdlib>

#include "core/error.hpp"
#include "dist/dist.hpp"

namespace moelab {

Collective* dist_init(int*, char***) {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* n = std::getenv(v); n && std::atoi(n) > 1)
      fail(
          fmt::format("started as {} processes, but this moelab was built without MPI (install "
                      "Debian's libopenmpi-dev and rebuild)",
                      n));
  return nullptr;
}

void dist_finish() {}
void dist_abort(int) {}

}  // namespace moelab
