#pragma once
// Many processes (mpirun / srun): the Open MPI transport behind train/collective.hpp. Built
// with MPI when CMake finds it (MOELAB_MPI); without, a program launched as several processes
// is refused in one line and a single process runs as always.
#include "train/collective.hpp"

namespace moelab {

// Call in main after signals_init (MPI's threads then inherit the blocked signals). Starts MPI
// only when a launcher started this process (its environment says so); returns the world when
// there is more than one process, else null.
Collective* dist_init(int* argc, char*** argv);
// Ends MPI at a normal exit.
void dist_finish();
// After an error on one rank: takes the others down instead of leaving them waiting.
void dist_abort(int code);

}  // namespace moelab
