#pragma once
// A run of a study that stopped with an error (a non-finite loss, a bad checkpoint, a full
// disk): the study records it in the run's folder (RUN_DIR/failed.json: the step, its total, the
// one-line reason), goes on with its other runs, leaves it out of the report's statistics and
// comparisons (listing it with its reason), and ends with exit status 3 (kStudyFailedRuns) after
// writing the report. The next start of the study tries a failed run again (from its last
// checkpoint) and clears the record.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "train/experiment.hpp"
#include "train/hook.hpp"

namespace moelab {

// The exit status of a study that went to its end but with runs (or measurements) that failed.
inline constexpr int kStudyFailedRuns = 3;

struct RunFailure {
  int64_t step = 0;        // the steps the run had taken when it stopped
  int64_t total = 0;       // of its total
  bool nonfinite = false;  // a non-finite loss or gradient stopped it (it diverged)
  std::string reason;      // the one-line error
};

void run_failure_write(const std::string& run_dir, const RunFailure& f);
std::optional<RunFailure> run_failure_read(const std::string& run_dir);
void run_failure_clear(const std::string& run_dir);

// "stopped at step S of N: REASON" (the report's and the progress line's wording).
std::string run_failure_line(const RunFailure& f);

// One run of a study: train_run, clearing an earlier failure record first. Returns 0, 130
// (interrupted), or 1 with the failure recorded in the run's folder and `*failure` set, where
// the run stopped with an error. In a data-parallel study the error is not caught (the ranks
// could not agree to go on): it ends the study as before.
int study_train(const Experiment& x, bool resume, RunFailure* failure, TrainerHooks extra = {});

// What a study does with study_train's status `rc` for its run NAME: on 130 it says how to go
// on ("STUDY interrupted in NAME; run the same command again to continue"); on a failure it says
// what stopped the run ("== NAME stopped at step S of N: REASON; GOES_ON") and adds NAME to
// `failed`. Returns rc.
int study_train_outcome(int rc, const std::string& name, const RunFailure& f, const char* study,
                        const char* goes_on, std::vector<std::string>& failed);

// The last line of a study that went to its end with failures: "WHAT (A, B)TAIL; exit status 3"
// (WHAT: "moelab study forgetting: 1 of 2 runs failed"; TAIL, e.g. "; the report lists why: R").
// Returns kStudyFailedRuns.
int study_failed_end(const std::string& what, const std::vector<std::string>& failed,
                     const std::string& tail);

}  // namespace moelab
