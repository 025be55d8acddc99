#include "study/failure.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "train/collective.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

std::string path_of(const std::string& run_dir) {
  return (fs::path(run_dir) / "failed.json").string();
}

int64_t checkpoint_step(const std::string& run_dir) {
  const auto list = checkpoint_list(run_dir);
  long step = 0;
  if (!list.empty()) std::sscanf(fs::path(list.back()).filename().c_str(), "step_%ld", &step);
  return step;
}

}  // namespace

void run_failure_write(const std::string& run_dir, const RunFailure& f) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  const ojson j = {
      {"step", f.step}, {"total_steps", f.total}, {"nonfinite", f.nonfinite}, {"reason", f.reason}};
  file_write_atomic(path_of(run_dir), j.dump(2) + "\n");
}

std::optional<RunFailure> run_failure_read(const std::string& run_dir) {
  const std::string path = path_of(run_dir);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  const ojson j = ojson::parse(file_read(path), nullptr, false);
  RunFailure f;
  if (!j.is_object()) {
    f.reason = path + ": unreadable record of a failure";
    return f;
  }
  f.step = j.value("step", int64_t(0));
  f.total = j.value("total_steps", int64_t(0));
  f.nonfinite = j.value("nonfinite", false);
  f.reason = j.value("reason", std::string("(no reason recorded)"));
  return f;
}

void run_failure_clear(const std::string& run_dir) {
  std::error_code ec;
  fs::remove(path_of(run_dir), ec);
}

std::string run_failure_line(const RunFailure& f) {
  return fmt::format("{} at step {} of {}: {}", f.nonfinite ? "diverged" : "stopped", f.step,
                     f.total, f.reason);
}

int study_train(const Experiment& x, bool resume, RunFailure* failure, TrainerHooks extra) {
  if (train_writer()) run_failure_clear(x.run_dir);
  if (train_collective()) return train_run(x, resume, std::move(extra));
  try {
    return train_run(x, resume, std::move(extra));
  } catch (const TrainStopped& e) {
    *failure = {e.step >= 0 ? e.step : checkpoint_step(x.run_dir), x.total_steps(), e.nonfinite,
                e.what()};
  } catch (const std::exception& e) {
    *failure = {checkpoint_step(x.run_dir), x.total_steps(), false, one_line(e.what())};
  }
  run_failure_write(x.run_dir, *failure);
  return 1;
}

int study_train_outcome(int rc, const std::string& name, const RunFailure& f, const char* study,
                        const char* goes_on, std::vector<std::string>& failed) {
  if (rc == 130)
    std::fprintf(stderr, "%s interrupted in %s; run the same command again to continue\n", study,
                 name.c_str());
  else if (rc != 0) {
    failed.push_back(name);
    std::fprintf(stderr, "== %s %s; %s\n", name.c_str(), run_failure_line(f).c_str(), goes_on);
  }
  return rc;
}

int study_failed_end(const std::string& what, const std::vector<std::string>& failed,
                     const std::string& tail) {
  std::string list;
  for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
  std::fprintf(stderr, "%s (%s)%s; exit status %d\n", what.c_str(), list.c_str(), tail.c_str(),
               kStudyFailedRuns);
  return kStudyFailedRuns;
}

}  // namespace moelab
