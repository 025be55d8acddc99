#include "train/checkpoint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"
#include "train/experiment.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string step_name(int64_t step) {
  return fmt::format("step_{:08d}", step);
}

// trainer_state.json's "optimizer_moments" when optimizer.safetensors holds the moments of the
// trainable tensors only. Without it (older checkpoints) it holds every tensor's, and the
// trainable ones are taken: the frozen set of such a run cannot be checked.
constexpr const char* kMomentsTrainable = "trainable";

void optimizer_load(const std::string& dir, bool trainable_only, AdamW<float>& opt) {
  const std::string file = (fs::path(dir) / "optimizer.safetensors").string();
  const auto tensors = safetensors_read(file);
  const ParamLayout& layout = opt.layout();
  for (size_t i = 0; i < layout.tensors.size(); i++) {
    const TensorView& t = layout.tensors[i];
    const int64_t at = opt.moment_offset(i);
    const bool saved = tensors.contains("m:" + t.name);
    if (trainable_only && saved != (at >= 0))
      fail(
          fmt::format("{}: tensor '{}' was {} in the checkpoint but is {} here; resume with the "
                      "same frozen tensors",
                      file, t.name, saved ? "trained" : "frozen", saved ? "frozen" : "trained"));
    if (at < 0) continue;
    // the part of the tensor inside this optimizer's shard (ZeRO-1; unsharded: all of it)
    const auto [lo, hi] = opt.shard_range(opt.shard_rank());
    const int64_t a = std::max(lo, at), b = std::min(hi, at + t.numel);
    for (const auto& [prefix, buf] : {std::pair{"m:", &opt.m}, std::pair{"v:", &opt.v}}) {
      const auto v = checkpoint_tensor(tensors, file, prefix + t.name, t.shape);
      if (a < b) std::copy(v.begin() + (a - at), v.begin() + (b - at), buf->begin() + (a - lo));
    }
  }
}

// optimizer.safetensors: the moments of the trainable tensors (a frozen one has none).
void optimizer_write(const std::string& dir, const Model<float>& model, const AdamW<float>& o) {
  check(o.shard_ranks() == 1, "checkpoint: the moments of a sharded optimizer are gathered first");
  std::vector<TensorRef> moments;
  for (size_t i = 0; i < model.layout.tensors.size(); i++) {
    const TensorView& t = model.layout.tensors[i];
    const int64_t at = o.moment_offset(i);
    if (at < 0) continue;  // frozen: no moments
    for (const auto& [prefix, buf] : {std::pair{"m:", &o.m}, std::pair{"v:", &o.v}})
      moments.push_back(tensor_ref<float>(
          prefix + t.name, std::span<const float>(buf->data() + at, size_t(t.numel)), t.shape));
  }
  safetensors_write((fs::path(dir) / "optimizer.safetensors").string(), moments);
}

}  // namespace

std::string checkpoint_save(const std::string& run_dir, int64_t step, const Model<float>& model,
                            const AdamW<float>& opt, const json& trainer_state, int keep_last) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) fail(fmt::format("{}: cannot create the run directory ({})", run_dir, ec.message()));
  const std::string final_dir = (fs::path(run_dir) / step_name(step)).string();
  const std::string tmp = (fs::path(run_dir) / fmt::format(".{}.tmp", step_name(step))).string();
  check(&opt.layout() == &model.layout, "checkpoint_save: the optimizer belongs to another model");
  // Frozen after the optimizer was built: before its first step the moments are zero whatever
  // the frozen set, so a re-laid-out copy is exact; after it, sync_trainable() refuses.
  std::optional<AdamW<float>> synced;
  if (!opt.in_sync()) synced.emplace(opt).sync_trainable();
  const AdamW<float>& o = synced ? *synced : opt;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) fail(fmt::format("{}: cannot write ({})", tmp, ec.message()));
  try {
    checkpoint_write_weights(tmp, model);
    optimizer_write(tmp, model, o);
    json state = trainer_state;
    state["step"] = step;
    state["optimizer_step"] = o.step;
    state["optimizer_moments"] = kMomentsTrainable;
    file_write_synced((fs::path(tmp) / "trainer_state.json").string(), state.dump(2) + "\n");
    file_fsync(tmp);
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir);
    file_fsync_parent(final_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (keep_last > 0) {
    const auto all = checkpoint_list(run_dir);
    for (size_t i = 0; i + size_t(keep_last) < all.size(); i++) fs::remove_all(all[i], ec);
  }
  return final_dir;
}

json checkpoint_load(const std::string& dir, Model<float>& model, AdamW<float>* opt) {
  json state = checkpoint_load_model(dir, model);
  if (opt) {
    check(&opt->layout() == &model.layout,
          "checkpoint_load: the optimizer belongs to another model");
    opt->step = 0;  // the loaded state replaces the optimizer's, laid out for today's frozen set
    opt->sync_trainable();
    optimizer_load(dir, state.value("optimizer_moments", "") == kMomentsTrainable, *opt);
    opt->step = state.value("optimizer_step", int64_t(0));
  }
  return state;
}

std::string checkpoint_run_data_dir(const std::string& ckpt_dir) {
  const fs::path run = fs::path(ckpt_dir).lexically_normal().parent_path() / "run.json";
  std::ifstream f(run);
  const json r = json::parse(f, nullptr, false);
  if (!r.is_object() || !r.contains("experiment") || !r["experiment"].is_string()) return "";
  try {
    return experiment_load(r["experiment"].get<std::string>(), {}).data_dir;
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace moelab
