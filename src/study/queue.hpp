#pragma once
// The run queue every study works through (study forgetting, ct and ders, sweep): a list of named
// runs, each an experiment built when its turn comes, trained one after another. A finished run is
// skipped, a stopped one resumes from its last checkpoint, one that fails is recorded in its
// folder (study/failure.hpp) and the others go on; an interrupt stops the queue with 130 and
// the line "STUDY interrupted in NAME; run the same command again to continue". Progress lines
// on stderr give each run's place in the queue and, for a queue of one process, the time left.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "study/failure.hpp"
#include "train/experiment.hpp"

namespace moelab {

struct QueueRun {
  std::string name;                        // its folder under the study's, in progress lines
  std::string what;                        // "E=8 top-2 seed 1" after "NAME: " ("": none)
  std::function<Experiment()> experiment;  // built (and its files written) when its turn comes
};

// Trains one run (study_train's contract); a study wraps it to measure around the training.
using QueueTrain = std::function<int(const Experiment& x, bool resume, RunFailure* failure)>;

struct QueueOptions {
  std::string study = "study";                                    // in "STUDY interrupted in NAME"
  std::string goes_on = "the study goes on with its other runs";  // after a failed run's line
  std::string others = "the study's other runs";                  // in the time estimate
  // Several processes work through the queue (a grid's workers): each run is taken under a file
  // lock, lock_dir/NAME.lock, and one held by another process is left to it; finished runs pass
  // silently and no time is estimated (the other workers' times are unknown).
  bool workers = false;
  std::string lock_dir;
  int64_t only = -1;  // run only the run at this index (a SLURM array task); -1: all
  QueueTrain train;   // empty: study_train
  // The study's folder (its runs are DIR/NAME): its page DIR/view.html (study/study_page.hpp)
  // follows the queue, reloading itself until the queue ends ("": no page).
  std::string page_dir;
};

struct QueueResult {
  int status = 0;                       // 0, or 130 when interrupted
  int64_t ran = 0, done = 0, busy = 0;  // trained here, finished before, held by other workers
  std::vector<std::string> failed;      // the runs' names
};

QueueResult queue_run(const std::vector<QueueRun>& runs, const QueueOptions& o);

// The step of a run folder's newest complete checkpoint (-1: none).
int64_t study_last_step(const std::string& run_dir);

}  // namespace moelab
