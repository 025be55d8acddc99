#pragma once
// A run's page of the HTML view (docs/view.md): RUN_DIR/view.html, one self-contained file with
// the run's losses, learning rate, M_ex/M_in, router and expert-load figures and a banner with
// its step, loss, speed and time left. While the run trains, RunPageHook rewrites it (atomically,
// at most every MOELAB_VIEW_SECONDS, default 10) with a self-refresh; at its end train_run writes
// the last version without one, saying whether the run finished, was interrupted or failed.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/experiment.hpp"
#include "train/hook.hpp"

namespace moelab {

// What a run folder's run.json and metrics.jsonl hold, as series over the steps. Read in
// increments: an update parses only the lines written since the last one, and all of them again
// where the file is not the one read before (another inode: a resume rewrites it) or no longer
// holds, where the last read ended, the line read there (rewritten in place, larger or not).
// run.json is read again whenever its modification time changes (a resume rewrites it).
struct RunSeries {
  std::string dir;
  nlohmann::json run;                          // run.json (null while there is none)
  std::filesystem::file_time_type run_time{};  // run.json's modification time when read
  // loss, lr, grad_norm, aux_loss, z_loss, tokens_per_s, mfu, val:SUBSET, m_ex, m_in, m_f,
  // max_load:LAYER -> (step, value)
  std::map<std::string, std::vector<std::pair<double, double>>> values;
  std::vector<std::vector<double>> load;  // the last expert_load logged, [layer][expert]
  int64_t load_step = -1;
  int64_t last_step = 0, skipped = 0, bad_lines = 0;
  std::string phase;  // of the last line
  // metrics.jsonl as read so far: its bytes [0, offset), the file's identity, and the last
  // bytes before offset (up to 256), which an update finds there again before going on
  uint64_t offset = 0;
  uint64_t device = 0, inode = 0;
  std::string tail;
};
// Reads what was added to DIR's files; false where the folder has no run.json.
bool run_series_update(RunSeries& r);
// The series' last value (NaN where it has none).
double run_series_last(const RunSeries& r, const std::string& key);
int64_t run_series_total_steps(const RunSeries& r);

enum class RunState { Running, Finished, Interrupted, Failed, Stopped };
const char* run_state_name(RunState s);  // "running", "finished", ...

struct RunPageStatus {
  RunState state = RunState::Stopped;
  std::string message;  // why it stopped, or how to go on
  int64_t step = -1;    // the step the trainer is at (-1: the last one logged)
  double eta_s = -1;    // time left (a live run; < 0: unknown)
  int64_t refresh_s = 0;
};
// The status a run's folder shows by itself: finished (every step logged), failed
// (failed.json), or stopped at its last step (a run that no process is writing).
RunPageStatus run_page_status_of(const RunSeries& r);

// Writes DIR/view.html from the series (updated first) and the status; returns its path.
std::string run_page_write(RunSeries& r, const RunPageStatus& st);
std::string run_page_path(const std::string& run_dir);
// A folder's own name, also given as "runs/x/" or "."
std::string run_page_folder_name(const std::string& dir);

// The least time between two rewrites of a live page: MOELAB_VIEW_SECONDS (default 10; a page
// that took long to write waits 20 times its cost, so that writing stays under 5% of the run).
double run_page_period_s();

// The hook that keeps the page of a running run current (the writing rank only).
class RunPageHook : public TrainerHook {
 public:
  explicit RunPageHook(const Experiment& x);
  void on_start(Trainer& t) override;
  void on_step_end(Trainer& t, const StepStats& r) override;

 private:
  void write(int64_t step, int64_t total);

  RunSeries series_;
  double period_s_ = 10;  // MOELAB_VIEW_SECONDS, read once
  double t_start_ = 0, t_last_ = 0, cost_s_ = 0;
  int64_t step_start_ = 0;
  bool warned_ = false;
};

// The run's last page, at the end of train_run: rc 0 (finished, or stopped early with its
// checkpoint) or 130 (interrupted), or the error that stopped it (`error` non-empty). A page
// that cannot be written is a warning line, never the run's failure.
void run_page_finish(const Experiment& x, int rc, const std::string& error);

// While one lives, every run page written in this process calls `f` after it (a study's page
// follows the progress of the run it is training).
class RunPageListener {
 public:
  explicit RunPageListener(std::function<void()> f);
  ~RunPageListener();
  RunPageListener(const RunPageListener&) = delete;
  RunPageListener& operator=(const RunPageListener&) = delete;
};

}  // namespace moelab
