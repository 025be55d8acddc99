#pragma once
// Checkpoint folders as far as the model goes: model.safetensors (Hugging Face GptOss tensor
// names, DeRS integer tensors), config.json and trainer_state.json. The optimizer's moments
// (optimizer.safetensors) are the trainer's (train/checkpoint.hpp). A folder is written into a
// hidden temporary folder, every file fsynced, then renamed and its parent fsynced: a crash at
// any point leaves no half checkpoint under a real name.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.hpp"
#include "model/model.hpp"

namespace moelab {

// model.safetensors and config.json of a model into the folder `dir`, each file fsynced.
void checkpoint_write_weights(const std::string& dir, const Model<float>& model);

// What every export checks before it reads (moelab export, export hf): the checkpoint folder
// and its config.json exist, `out` does not. Returns the checkpoint's config.
ModelConfig checkpoint_export_begin(const std::string& checkpoint, const std::string& out);

// The checkpoint folder `out` (model.safetensors, config.json, trainer_state.json; no optimizer
// state) of a model alone, written as checkpoints are: into a hidden temporary folder beside
// it, every file fsynced, then renamed, so that an error leaves nothing under `out`. It
// evaluates and initialises runs (init_from); it does not resume one.
void checkpoint_write_model(const std::string& out, const Model<float>& model,
                            const nlohmann::json& trainer_state);

// Loads the weights into a model built from the run's config (the optimizer's moments are not
// read). A checkpoint whose config differs is refused with the first mismatching field. Returns
// the trainer state.
nlohmann::json checkpoint_load_model(const std::string& ckpt_dir, Model<float>& model);

// A tensor of a checkpoint file, refused naming it unless it is F32 of the given shape.
std::span<const float> checkpoint_tensor(const std::map<std::string, TensorData>& tensors,
                                         const std::string& file, const std::string& name,
                                         const std::vector<int64_t>& shape);

// What checkpoint_init_from did: the model's tensors read from the checkpoint, and those the
// checkpoint does not have (left as init_weights made them), both in layout order.
struct InitReport {
  std::vector<std::string> loaded, fresh;
};

// Starts a model from another run's weights ([model] init_from): every tensor of the checkpoint's
// model.safetensors goes into the model's tensor of the same name. The model must contain the
// checkpoint: a tensor the model lacks, or one of another shape, is refused naming both shapes.
// Added tensors (adapters, experts, layers) are what this is for and stay fresh; a config field
// that changes what equal shapes mean (attention geometry, RoPE, norm eps, SwiGLU clamp, the
// sliding pattern of the checkpoint's layers, tied embeddings) is refused naming the field.
// Neither optimizer nor trainer state is read: the run starts at step 0.
InitReport checkpoint_init_from(const std::string& ckpt_dir, Model<float>& model);

// Refuses a checkpoint whose trainer state records another tokenizer than the one of data_dir
// (ids of one tokenizer mean nothing to another). Older checkpoints record none and pass.
void checkpoint_check_tokenizer(const std::string& ckpt_dir, const nlohmann::json& trainer_state,
                                uint64_t fingerprint, const std::string& data_dir);

// Complete checkpoints of a run, oldest first (temporary folders of interrupted writes skipped).
std::vector<std::string> checkpoint_list(const std::string& run_dir);

}  // namespace moelab
