#pragma once
// Checkpoints: RUN/step_NNNNNNNN/ holding model.safetensors (Hugging Face GptOss tensor names),
// config.json, optimizer.safetensors (AdamW moments "m:NAME", "v:NAME" of the trainable tensors
// only) and trainer_state.json (with the optimizer's step). A checkpoint is written into a hidden
// temporary folder, every file fsynced, then renamed: a crash at any point leaves the previous
// checkpoints intact and no half checkpoint under a real name.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.hpp"
#include "train/adamw.hpp"

namespace moelab {

// Writes the checkpoint of `step`, then removes all but the newest keep_last (0 keeps all).
// Returns its folder.
std::string checkpoint_save(const std::string& run_dir, int64_t step, const Model<float>& model,
                            const AdamW<float>& opt, const nlohmann::json& trainer_state,
                            int keep_last);

// What every export checks before it reads (moelab export, export hf): the checkpoint folder
// and its config.json exist, `out` does not. Returns the checkpoint's config.
ModelConfig checkpoint_export_begin(const std::string& checkpoint, const std::string& out);

// The checkpoint folder `out` (model.safetensors, config.json, trainer_state.json; no optimizer
// state) of a model alone, written as checkpoints are: into a hidden temporary folder beside
// it, every file fsynced, then renamed, so that an error leaves nothing under `out`. It
// evaluates and initialises runs (init_from); it does not resume one.
void checkpoint_write_model(const std::string& out, const Model<float>& model,
                            const nlohmann::json& trainer_state);

// Loads weights (and, if opt is given, the optimizer) into a model built from the run's config.
// A checkpoint whose config differs is refused with the first mismatching field, and one whose
// trainable tensors differ from the model's (frozen set) with the first such tensor. Returns the
// trainer state.
nlohmann::json checkpoint_load(const std::string& ckpt_dir, Model<float>& model, AdamW<float>* opt);

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
