#include "train/run_dir.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

RunClaim run_dir_claim(const Experiment& x, bool resume) {
  const auto existing = checkpoint_list(x.run_dir);
  const fs::path dir = x.run_dir;
  if (!existing.empty()) {
    if (!resume)
      fail(fmt::format("{}: already holds a run; use --resume, or choose another run.dir",
                       x.run_dir));
    return {existing.back(), false};
  }
  std::error_code ec;
  if (fs::exists(dir / "metrics.jsonl", ec) || fs::exists(dir / "run.json", ec)) return {"", true};
  if (resume) fail(fmt::format("{}: no checkpoint to resume from", x.run_dir));
  return {"", false};
}

void run_dir_create(const Experiment& x, bool stale) {
  std::error_code ec;
  if (stale) {
    std::fprintf(stderr, "%s: the run there stopped before its first checkpoint; starting again\n",
                 x.run_dir.c_str());
    for (const char* f : {"metrics.jsonl", "run.json"}) {
      fs::remove(fs::path(x.run_dir) / f, ec);
    }
  }
  fs::create_directories(x.run_dir, ec);
  if (ec) {
    fail(fmt::format("{}: cannot create the run directory ({})", x.run_dir, ec.message()));
  }
}

std::string run_dir_last_good(const std::string& run_dir) {
  const auto list = checkpoint_list(run_dir);
  return list.empty() ? std::string("no checkpoint was written yet")
                      : fmt::format("the last good checkpoint is {}", list.back());
}

void run_dir_write_info(const Experiment& x, const FlopCounts& flops, const TrainerHooks& hooks) {
  const ParamCounts pc = config_count(x.model);
  ojson phases = ojson::array();
  int64_t at = 0;
  for (const PhaseConfig& p : x.phases) {
    phases.push_back({{"name", p.name},
                      {"subset", p.subset},
                      {"start_step", at},
                      {"end_step", at + x.phase_steps(p)}});
    at += x.phase_steps(p);
  }
  ojson run = {{"experiment", x.source},
               {"seed", x.seed},
               {"experts", x.model.num_local_experts},
               {"top_k", x.model.num_experts_per_tok},
               {"params_total", pc.total},
               {"params_active", pc.active},
               {"train_flops_per_token", flops.train_per_token},
               {"seq_len", x.seq_len},
               {"tokens_per_step", x.tokens_per_step()},
               {"total_steps", x.total_steps()}};
  for (const auto& h : hooks) h->run_info(run);
  run["phases"] = phases;
  run["model"] = config_to_json(x.model);
  if (!x.init_from.empty()) run["init_from"] = x.init_from;
  if (!x.freeze.empty()) run["freeze"] = x.freeze;
  file_write_atomic((fs::path(x.run_dir) / "run.json").string(), run.dump(2) + "\n");
}

void run_dir_truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("step", int64_t(0)) <= step) kept += line + "\n";
  }
  in.close();
  file_write_atomic(path, kept);
}

}  // namespace moelab
