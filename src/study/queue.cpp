#include "study/queue.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
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
// With several workers the page is one for all of them: a worker that stops while another
// still trains (holds a run's lock) leaves it reloading, and the last one to stop ends it.
class QueuePage {
 public:
  QueuePage(const std::vector<QueueRun>& runs, const QueueOptions& o)
      : on_(!o.page_dir.empty() && train_writer()),
        lock_dir_(o.workers ? o.lock_dir : ""),
        listener_([this] { write(); }) {
    page_.dir = o.page_dir;
    page_.live = true;
    for (const QueueRun& r : runs) {
      page_.runs.push_back({r.name, r.what});
    }
  }
  // A queue left by an exception says so (not "running" forever); never throws.
  ~QueuePage() {
    if (ended_) {
      return;
    }
    try {
      end("stopped by an error (see the log)", "stopped by an error");
    } catch (...) {  // a destructor that may run while unwinding must not throw
    }
  }
  QueuePage(const QueuePage&) = delete;
  QueuePage& operator=(const QueuePage&) = delete;

  void at(size_t i) {
    page_.current = int64_t(i);
    write();
  }
  void idle(const std::string& note) {
    page_.current = -1;
    page_.note = note;
    write();
  }
  // The queue's end, `how`; a worker whose end is not the queue's (others still train) says
  // `this_worker` instead and leaves the page reloading.
  void end(const std::string& how, const std::string& this_worker) {
    ended_ = true;
    page_.current = -1;
    if (const size_t busy = others_training(); busy > 0) {
      page_.note =
          fmt::format("{} run(s) training in other workers; one worker {}", busy, this_worker);
      write();
      return;
    }
    page_.live = false;
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
  // The runs whose lock another process holds (this one holds none when it ends).
  size_t others_training() const {
    if (lock_dir_.empty()) {
      return 0;
    }
    size_t n = 0;
    for (const StudyPageRun& r : page_.runs) {
      const std::string path = (fs::path(lock_dir_) / (r.name + ".lock")).string();
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        continue;  // never taken
      }
      if (::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        n++;
      }
      ::close(fd);
    }
    return n;
  }

  const bool on_;
  const std::string lock_dir_;  // a worker's: the runs' locks ("": a queue of one process)
  bool ended_ = false;
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
  double trained_s = 0;     // for the estimate of what is left
  std::string interrupted;  // the run an interrupt stopped
  try {
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
        interrupted = run.name;
        break;  // with the run's lock released: the page sees only the other workers'
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
  } catch (const std::exception& e) {
    // the page says why the queue stopped (not "running" until it looks stale)
    page.end("stopped: " + one_line(e.what()), "stopped: " + one_line(e.what()));
    throw;
  }
  if (q.status == 130) {
    page.end(fmt::format("interrupted in {}; the same command continues the study", interrupted),
             "was interrupted in " + interrupted);
    return q;
  }
  page.end(o.workers
               ? "no worker is training the study's runs any more"
               : fmt::format("the queue is through: {} run(s){}", runs.size(),
                             q.failed.empty() ? "" : fmt::format(", {} failed", q.failed.size())),
           "is through its part of the queue");
  if (!o.workers) {
    std::fprintf(stderr, "== all %zu runs done in %.1f s%s\n", runs.size(), time_now_s() - t0,
                 q.failed.empty() ? "" : fmt::format(", {} failed", q.failed.size()).c_str());
  }
  return q;
}

}  // namespace moelab
