#include "convert/checkpoint.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <span>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"
#include "model/delta.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

void write_json(const std::string& path, const nlohmann::json& j) {
  file_write_synced(path, j.dump(2) + "\n");
}

json config_read(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::ifstream f(path);
  if (!f) fail(fmt::format("{}: not a checkpoint (no config.json)", dir));
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception&) {
    fail(path + ": invalid JSON");
  }
  if (!j.is_object()) fail(path + ": not a JSON object");
  return j;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// init_from: the config fields that change what tensors of unchanged shape mean. Heads x head_dim
// can be regrouped at equal width; RoPE, norm eps and the SwiGLU clamp change the function the
// weights were trained for; a tied checkpoint has no lm_head, and a fresh one would silently
// replace the embedding's role. Everything else (experts, k, biases, sinks, layers, context
// length, loss coefficients, sections added later) changes shapes or only adds tensors.
void init_check_config(const std::string& dir, const json& saved, const json& mine) {
  auto refuse = [&](const std::string& key, const json& a, const json& b) {
    fail(
        fmt::format("{}: cannot initialise from this checkpoint: '{}' is {} in the checkpoint and "
                    "{} here (the same shapes would mean something else)",
                    dir, key, a.dump(), b.dump()));
  };
  for (const char* key :
       {"num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling",
        "rms_norm_eps", "swiglu_limit", "swiglu_alpha", "tie_word_embeddings"}) {
    const json a = saved.contains(key) ? saved[key] : json("missing");
    if (a != mine[key]) refuse(key, a, mine[key]);
  }
  // The checkpoint's layers keep their attention pattern; added layers may have any.
  const json& lt = saved.contains("layer_types") ? saved["layer_types"] : json();
  if (!lt.is_array()) refuse("layer_types", lt, mine["layer_types"]);
  bool sliding = false;
  for (size_t l = 0; l < lt.size(); l++) {
    if (l < mine["layer_types"].size() && lt[l] != mine["layer_types"][l])
      refuse(fmt::format("layer_types[{}]", l), lt[l], mine["layer_types"][l]);
    sliding = sliding || lt[l] == "sliding_attention";
  }
  const json sw = saved.contains("sliding_window") ? saved["sliding_window"] : json("missing");
  if (sliding && sw != mine["sliding_window"]) refuse("sliding_window", sw, mine["sliding_window"]);
}

}  // namespace

std::span<const float> checkpoint_tensor(const std::map<std::string, TensorData>& tensors,
                                         const std::string& file, const std::string& name,
                                         const std::vector<int64_t>& shape) {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail(fmt::format("{}: no tensor '{}'", file, name));
  if (it->second.shape != shape || it->second.dtype != DType::F32)
    fail(fmt::format("{}: tensor '{}' has the wrong shape or dtype", file, name));
  return it->second.as<float>();
}

std::vector<std::string> checkpoint_list(const std::string& run_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step_", 0) == 0 &&
        fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ----------------------------------------------------------------------------
// integer tensors (DeRS): int32 positions as I32; int8 codes packed to their bit width as U8

namespace {

struct IntRefs {
  std::vector<std::vector<uint8_t>> packed;  // keeps the packed codes alive
  std::vector<TensorRef> refs;
};

IntRefs ints_refs(const Model<float>& model) {
  IntRefs r;
  r.packed.reserve(model.layout.ints.size());
  for (const IntTensor& t : model.layout.ints) {
    if (t.bits == 32) {
      r.refs.push_back(tensor_ref<int32_t>(
          t.name, std::span<const int32_t>(model.index.data() + t.offset, size_t(t.numel)),
          t.shape));
      continue;
    }
    r.packed.push_back(delta_pack(
        std::span<const int8_t>(model.codes.data() + t.offset, size_t(t.numel)), t.bound));
    const auto& b = r.packed.back();
    r.refs.push_back(tensor_ref<uint8_t>(t.name, std::span<const uint8_t>(b), {int64_t(b.size())}));
  }
  return r;
}

// Reads the model's integer tensors that `tensors` holds (all of them when `required`), each
// checked before any is stored: shape, dtype, and every position inside its matrix.
void ints_load(const std::map<std::string, TensorData>& tensors, const std::string& file,
               Model<float>& model, bool required) {
  std::vector<std::pair<const IntTensor*, const TensorData*>> found;
  for (const IntTensor& t : model.layout.ints) {
    auto it = tensors.find(t.name);
    if (it == tensors.end()) {
      if (required) fail(fmt::format("{}: tensor '{}' is missing", file, t.name));
      continue;
    }
    const TensorData& d = it->second;
    const int64_t packed = (t.numel * t.bound + 7) / 8;
    if (t.bits == 32 && (d.dtype != DType::I32 || d.shape != t.shape))
      fail(fmt::format("{}: tensor '{}' must be I32 {} (positions)", file, t.name,
                       shape_str(t.shape)));
    if (t.bits == 8 && (d.dtype != DType::U8 || d.shape != std::vector<int64_t>{packed}))
      fail(fmt::format("{}: tensor '{}' must be U8 [{}] ({}-bit codes packed)", file, t.name,
                       packed, t.bound));
    if (t.bits == 32)
      for (int32_t v : d.as<int32_t>())
        if (v < 0 || v >= t.bound)
          fail(fmt::format("{}: tensor '{}' has position {} outside [0, {})", file, t.name, v,
                           t.bound));
    found.push_back({&t, &d});
  }
  for (const auto& [t, d] : found) {
    if (t->bits == 32) {
      const auto v = d->as<int32_t>();
      std::copy(v.begin(), v.end(), model.index.begin() + t->offset);
    } else {
      const auto v = delta_unpack(d->as<uint8_t>(), t->numel, t->bound);
      std::copy(v.begin(), v.end(), model.codes.begin() + t->offset);
    }
  }
}

}  // namespace

void checkpoint_write_weights(const std::string& dir, const Model<float>& model) {
  std::vector<TensorRef> weights;
  for (const TensorView& t : model.layout.tensors)
    weights.push_back(tensor_ref<float>(
        t.name, std::span<const float>(model.params.data() + t.offset, size_t(t.numel)), t.shape));
  const IntRefs ints = ints_refs(model);
  weights.insert(weights.end(), ints.refs.begin(), ints.refs.end());
  const json cfg = config_to_json(model.cfg);
  safetensors_write((fs::path(dir) / "model.safetensors").string(), weights,
                    {{"format", "pt"}, {"config", cfg.dump()}});
  write_json((fs::path(dir) / "config.json").string(), cfg);
}

ModelConfig checkpoint_export_begin(const std::string& checkpoint, const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(checkpoint, ec))
    fail(fmt::format("{}: no such checkpoint folder", checkpoint));
  if (fs::exists(out, ec) || fs::is_symlink(out, ec))
    fail(fmt::format("--out {}: already exists (export never replaces a folder)", out));
  const std::string config_path = (fs::path(checkpoint) / "config.json").string();
  if (!fs::exists(config_path, ec))
    fail(fmt::format("{}: not a checkpoint (no config.json)", checkpoint));
  return config_load(config_path);
}

void checkpoint_write_model(const std::string& out, const Model<float>& m, const json& state) {
  fs::path dst = fs::path(out).lexically_normal();
  if (!dst.has_filename()) dst = dst.parent_path();  // "DIR/"
  const fs::path parent = dst.has_parent_path() ? dst.parent_path() : fs::path(".");
  const std::string name = dst.filename().string();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) fail(fmt::format("--out {}: cannot create {} ({})", out, parent.string(), ec.message()));
  const std::string tmp = (parent / fmt::format(".{}.tmp", name)).string();
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  if (ec) fail(fmt::format("--out {}: cannot write ({})", out, ec.message()));
  try {
    checkpoint_write_weights(tmp, m);
    write_json((fs::path(tmp) / "trainer_state.json").string(), state);
    file_fsync(tmp);
    fs::rename(tmp, dst, ec);  // a folder with files that appeared there meanwhile stays
    if (ec)
      fail(fmt::format("--out {}: cannot rename the written folder into place ({})", out,
                       ec.message()));
    file_fsync_parent(dst.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

json checkpoint_load_model(const std::string& dir, Model<float>& model) {
  const json saved = config_read(dir);
  const json mine = config_to_json(model.cfg);
  for (auto& [key, value] : mine.items())
    if (!saved.contains(key) || saved[key] != value)
      fail(
          fmt::format("{}: checkpoint config differs from this run's: '{}' is {} in the "
                      "checkpoint and {} here",
                      dir, key, saved.contains(key) ? saved[key].dump() : "missing", value.dump()));
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  const auto tensors = safetensors_read(weights);
  for (const TensorView& t : model.layout.tensors) {
    const auto v = checkpoint_tensor(tensors, weights, t.name, t.shape);
    std::copy(v.begin(), v.end(), model.params.begin() + t.offset);
  }
  ints_load(tensors, weights, model, true);
  // Older versions could save a diverged model; resuming from it would fail at its first step.
  if (const auto bad = std::count_if(model.params.begin(), model.params.end(),
                                     [](float f) { return !std::isfinite(f); });
      bad > 0)
    fail(fmt::format("{}: {} parameters are not finite; resume from an earlier checkpoint", dir,
                     bad));
  std::ifstream sf((fs::path(dir) / "trainer_state.json").string());
  if (!sf) fail(fmt::format("{}: no trainer_state.json", dir));
  json state = json::parse(sf, nullptr, false);
  if (!state.is_object() ||
      (state.contains("optimizer_step") && !state["optimizer_step"].is_number_integer()) ||
      (state.contains("optimizer_moments") && !state["optimizer_moments"].is_string()))
    fail(fmt::format("{}/trainer_state.json: not a trainer state (invalid JSON or mistyped fields)",
                     dir));
  return state;
}

InitReport checkpoint_init_from(const std::string& dir, Model<float>& model) {
  init_check_config(dir, config_read(dir), config_to_json(model.cfg));
  const std::string file = (fs::path(dir) / "model.safetensors").string();
  if (!fs::exists(file)) fail(fmt::format("{}: no model.safetensors", dir));
  const auto tensors = safetensors_read(file);
  // Every refusal comes before the first copy: a refused model is left as it was.
  for (const auto& [name, data] : tensors) {
    if (model.layout.find_int(name)) continue;  // checked by ints_load
    const TensorView* t = model.layout.find(name);
    if (!t)
      fail(
          fmt::format("{}: tensor '{}' {} is not in the model (it must contain every tensor of "
                      "the checkpoint)",
                      file, name, shape_str(data.shape)));
    if (data.shape != t->shape)
      fail(fmt::format("{}: tensor '{}' is {} in the checkpoint and {} in the model", file, name,
                       shape_str(data.shape), shape_str(t->shape)));
    if (data.dtype != DType::F32) fail(fmt::format("{}: tensor '{}' is not F32", file, name));
    const auto v = data.as<float>();
    if (const auto bad =
            std::count_if(v.begin(), v.end(), [](float f) { return !std::isfinite(f); });
        bad > 0)
      fail(fmt::format("{}: tensor '{}' has {} values that are not finite", file, name, bad));
  }
  ints_load(tensors, file, model, false);
  InitReport r;
  for (const TensorView& t : model.layout.tensors) {
    auto it = tensors.find(t.name);
    if (it == tensors.end()) {
      r.fresh.push_back(t.name);
      continue;
    }
    const auto v = it->second.as<float>();
    std::copy(v.begin(), v.end(), model.params.begin() + t.offset);
    r.loaded.push_back(t.name);
  }
  // tensors whose start derives from loaded ones (MoE-CT's experts copy their layer's FFN)
  const std::set<std::string> fresh(r.fresh.begin(), r.fresh.end());
  model.init_derived([&](const std::string& name) { return fresh.contains(name); });
  return r;
}

void checkpoint_check_tokenizer(const std::string& ckpt_dir, const json& trainer_state,
                                uint64_t fingerprint, const std::string& data_dir) {
  const json* saved = trainer_state.contains("tokenizer_fingerprint")
                          ? &trainer_state["tokenizer_fingerprint"]
                          : nullptr;
  if (!saved) return;
  if (!saved->is_number_unsigned())
    fail(fmt::format("{}/trainer_state.json: 'tokenizer_fingerprint' must be an unsigned integer",
                     ckpt_dir));
  if (saved->get<uint64_t>() != fingerprint)
    fail(
        fmt::format("{}: trained with tokenizer {:016x}, but the data in {} uses {:016x}; use "
                    "the run's own data directory",
                    ckpt_dir, saved->get<uint64_t>(), data_dir, fingerprint));
}

}  // namespace moelab
