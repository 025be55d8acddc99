#pragma once
// A checkpoint and its data folder's tokenizer, loaded for inference (generate, serve), with the
// checks both need: the folder exists, the vocabulary covers the tokenizer's, the checkpoint was
// trained with this tokenizer.
#include <memory>
#include <string>

#include "data/dataset.hpp"
#include "model/model.hpp"

namespace moelab {

struct InferenceModel {
  DataDir data;
  std::unique_ptr<Model<float>> model;
};

InferenceModel inference_load(const std::string& checkpoint, const std::string& data_dir);

}  // namespace moelab
