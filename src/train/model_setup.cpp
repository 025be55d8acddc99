#include "train/model_setup.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Tensor names for a message: the layers' tensors of one kind in one entry, with their layer
// numbers (model.layers.{0-3,5}.mlp.router.weight), in the order they first come.
std::string names_brief(const std::vector<std::string>& names) {
  static const std::regex layer(R"(^model\.layers\.(\d+)\.(.+)$)");
  std::vector<std::pair<std::string, std::vector<int64_t>>> groups;  // suffix -> layers
  std::vector<std::string> out;
  for (const std::string& n : names) {
    std::smatch m;
    if (!std::regex_match(n, m, layer)) {
      out.push_back(n);
      continue;
    }
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == m[2].str(); });
    if (it == groups.end()) {
      out.push_back("");  // filled below, in this place
      groups.push_back({m[2].str(), {}});
      it = groups.end() - 1;
    }
    it->second.push_back(std::stoll(m[1]));
  }
  size_t g = 0;
  for (std::string& o : out) {
    if (!o.empty()) continue;
    const auto& [suffix, layers] = groups[g++];
    std::string ranges;
    for (size_t i = 0; i < layers.size();) {
      size_t j = i;
      while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) j++;
      ranges += fmt::format(
          "{}{}", ranges.empty() ? "" : ",",
          j == i ? fmt::format("{}", layers[i]) : fmt::format("{}-{}", layers[i], layers[j]));
      i = j + 1;
    }
    o = layers.size() == 1 ? fmt::format("model.layers.{}.{}", ranges, suffix)
                           : fmt::format("model.layers.{{{}}}.{}", ranges, suffix);
  }
  std::string s;
  for (const std::string& o : out) s += (s.empty() ? "" : ", ") + o;
  return s;
}

}  // namespace

const ParamLayout& model_setup_freeze(Model<float>& model, const Experiment& x) {
  for (const std::string& p : x.freeze)
    if (model.layout.set_frozen(p, true) == 0)
      fail(
          fmt::format("{}: 'train.freeze' pattern '{}' matches no tensor of the model (names as "
                      "in Hugging Face GptOss, e.g. model.layers.0.mlp.router.weight)",
                      x.source, p));
  return model.layout;
}

void model_setup_print_frozen(const Model<float>& model, const Experiment& x) {
  if (x.freeze.empty()) {
    return;
  }
  std::vector<std::string> frozen;
  int64_t n = 0;
  for (const TensorView& t : model.layout.tensors) {
    if (t.frozen) {
      frozen.push_back(t.name);
      n += t.numel;
    }
  }
  std::fprintf(stderr, "frozen: %zu tensors, %ld of %ld parameters: %s\n", frozen.size(), long(n),
               long(model.layout.total), names_brief(frozen).c_str());
}

void model_setup_init_from(Model<float>& model, const Experiment& x, uint64_t fingerprint) {
  const std::string& dir = x.init_from;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(fmt::format("{}: 'model.init_from': {}: no such checkpoint folder", x.source, dir));
  const InitReport r = checkpoint_init_from(dir, model);
  // Token ids of another tokenizer would mean nothing here.
  const fs::path state_path = fs::path(dir) / "trainer_state.json";
  if (fs::exists(state_path, ec)) {
    const json state = json::parse(file_read(state_path.string()), nullptr, false);
    if (!state.is_object())
      fail(fmt::format("{}: not a trainer state (invalid JSON)", state_path.string()));
    checkpoint_check_tokenizer(dir, state, fingerprint, x.data_dir);
  }
  std::fprintf(stderr, "init_from %s: %zu tensors loaded", dir.c_str(), r.loaded.size());
  if (r.fresh.empty())
    std::fprintf(stderr, ", none new\n");
  else
    std::fprintf(stderr, "; %zu new (initialized from run.seed): %s\n", r.fresh.size(),
                 names_brief(r.fresh).c_str());
}

}  // namespace moelab
