#include "cli/inference.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "core/error.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;

InferenceModel inference_load(const std::string& checkpoint, const std::string& data_dir) {
  const std::string config_path = (fs::path(checkpoint) / "config.json").string();
  if (!fs::is_directory(checkpoint)) fail(fmt::format("{}: no such checkpoint folder", checkpoint));
  const ModelConfig cfg = config_load(config_path);
  InferenceModel m{data_open(data_dir), nullptr};
  if (cfg.vocab_size < m.data.vocab_size)
    fail(fmt::format("{}: vocab_size {} is smaller than the vocabulary of {}'s tokenizer ({})",
                     config_path, cfg.vocab_size, data_dir, m.data.vocab_size));
  m.model = std::make_unique<Model<float>>(cfg, 1, 1);
  checkpoint_check_tokenizer(checkpoint, checkpoint_load(checkpoint, *m.model, nullptr),
                             m.data.fingerprint, data_dir);
  return m;
}

}  // namespace moelab
