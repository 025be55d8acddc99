#include "study/queue.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "core/error.hpp"
#include "core/sysinfo.hpp"
#include "study/study_page.hpp"
#include "train/checkpoint.hpp"
#include "train/collective.hpp"
#include "train/run_page.hpp"

namespace moelab {

namespace fs = std::filesystem;

int64_t study_last_step(const std::string& run_dir) {
  const auto list = checkpoint_list(run_dir);
  long step = -1;
  if (!list.empty()) {
    std::sscanf(fs::path(list.back()).filename().c_str(), "step_%ld", &step);
  }
  return step;
}

namespace {

// An exclusive lock on a run's lock file while it trains: released by the kernel when the
// process ends, however it ends, so a killed worker's run is free for the next one.
class RunLock {
 public:
  explicit RunLock(const std::string& path) {
    if (path.empty()) {
      return;
    }
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      fail(fmt::format("{}: cannot open the job lock", path));
    }
    held_ = ::flock(fd_, LOCK_EX | LOCK_NB) == 0;
  }
  ~RunLock() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  bool held() const { return held_; }

 private:
  int fd_ = -1;
  bool held_ = true;  // no lock file: the run is this process's
};

}  // namespace

namespace {

// The study's page as the queue goes: rewritten at each run's start and end and with every page
// of the run being trained (RunPageListener); its last version, without a refresh, at the end.
class QueuePage {
 public:
  QueuePage(const std::vector<QueueRun>& runs, const QueueOptions& o)
      : on_(!o.page_dir.empty() && train_writer()), listener_([this] { write(); }) {
    page_.dir = o.page_dir;
    page_.live = true;
    for (const QueueRun& r : runs) {
      page_.runs.push_back({r.name, r.what});
    }
  }
  void at(size_t i) {
    page_.current = int64_t(i);
    write();
  }
  void idle(const std::string& note) {
    page_.current = -1;
    page_.note = note;
    write();
  }
  void end(const std::string& how) {
    page_.live = false;
    page_.current = -1;
    page_.end = how;
    write();
  }
  void write() {
    if (!on_) {
      return;
    }
    try {
      pages_.write(page_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "warning: the study's page was not written: %s\n",
                   one_line(e.what()).c_str());
    }
  }

 private:
  const bool on_;
  StudyPage page_;
  StudyPageWriter pages_;
  const RunPageListener listener_;
};

}  // namespace

QueueResult queue_run(const std::vector<QueueRun>& runs, const QueueOptions& o) {
  QueueResult q;
  QueuePage page(runs, o);
  page.write();
  const double t0 = time_now_s();
  double trained_s = 0;  // for the estimate of what is left
  for (size_t i = 0; i < runs.size(); i++) {
    if (o.only >= 0 && int64_t(i) != o.only) {
      continue;
    }
    const QueueRun& run = runs[i];
    const RunLock lock(o.workers ? (fs::path(o.lock_dir) / (run.name + ".lock")).string() : "");
    if (!lock.held()) {
      q.busy++;
      continue;
    }
    const Experiment x = run.experiment();
    train_barrier();  // rank 0's last checkpoint is written before any rank looks
    const int64_t last = study_last_step(x.run_dir);
    if (o.workers) {
      if (last == x.total_steps()) {
        q.done++;
        continue;
      }
      std::fprintf(stderr, "== job %zu/%zu %s%s\n", i + 1, runs.size(), run.name.c_str(),
                   last >= 0 ? " (resuming)" : "");
    } else {
      std::fprintf(stderr, "== %zu/%zu %s: %s", i + 1, runs.size(), run.name.c_str(),
                   run.what.c_str());
      if (last == x.total_steps()) {
        std::fprintf(stderr, " (done)\n");
        q.done++;
        continue;
      }
      std::fprintf(stderr, last >= 0 ? " (resuming)\n" : "\n");
    }
    const double tv = time_now_s();
    page.at(i);
    RunFailure failure;
    const int rc = study_train_outcome(
        o.train ? o.train(x, last >= 0, &failure) : study_train(x, last >= 0, &failure), run.name,
        failure, o.study.c_str(), o.goes_on.c_str(), q.failed);
    if (rc == 130) {
      q.status = 130;
      page.end(fmt::format("interrupted in {}; the same command continues the study", run.name));
      return q;
    }
    if (rc != 0) {
      page.idle("");
      continue;
    }
    q.ran++;
    if (o.workers) {
      page.idle("");
      continue;
    }
    trained_s += time_now_s() - tv;
    const double left = trained_s / double(q.ran) * double(runs.size() - i - 1);
    page.idle(fmt::format("{}: about {:.0f} min", o.others, left / 60));
    std::fprintf(stderr, "== %s finished in %.1f s; %s: about %.0f min\n", run.name.c_str(),
                 time_now_s() - tv, o.others.c_str(), left / 60);
  }
  page.end(o.workers
               ? "this worker's part of the queue is done"
               : fmt::format("the queue is through: {} run(s){}", runs.size(),
                             q.failed.empty() ? "" : fmt::format(", {} failed", q.failed.size())));
  if (!o.workers) {
    std::fprintf(stderr, "== all %zu runs done in %.1f s%s\n", runs.size(), time_now_s() - t0,
                 q.failed.empty() ? "" : fmt::format(", {} failed", q.failed.size()).c_str());
  }
  return q;
}

}  // namespace moelab
