#pragma once
// Training checkpoints: RUN/step_NNNNNNNN/ holding the model's folder (convert/checkpoint.hpp:
// model.safetensors, config.json), optimizer.safetensors (AdamW moments "m:NAME", "v:NAME" of
// the trainable tensors only) and trainer_state.json (with the optimizer's step). A checkpoint
// is written into a hidden temporary folder, every file fsynced, then renamed: a crash at any
// point leaves the previous checkpoints intact and no half checkpoint under a real name.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "convert/checkpoint.hpp"
#include "model/model.hpp"
#include "train/adamw.hpp"

namespace moelab {

// Writes the checkpoint of `step`, then removes all but the newest keep_last (0 keeps all).
// Returns its folder. `opt` unsharded (a ZeRO-1 run gathers its moments first): a checkpoint
// holds whole moments, so any number of ranks resumes it.
std::string checkpoint_save(const std::string& run_dir, int64_t step, const Model<float>& model,
                            const AdamW<float>& opt, const nlohmann::json& trainer_state,
                            int keep_last);

// Loads weights (and, if opt is given, the optimizer) into a model built from the run's config.
// A checkpoint whose config differs is refused with the first mismatching field, and one whose
// trainable tensors differ from the model's (frozen set) with the first such tensor. A sharded
// optimizer (AdamW::set_shard) takes its shard of the moments. Returns the trainer state.
nlohmann::json checkpoint_load(const std::string& ckpt_dir, Model<float>& model, AdamW<float>* opt);

// The data folder of the run a checkpoint RUN/step_N belongs to: that of the experiment file
// RUN/run.json names. "" when there is none or it cannot be read.
std::string checkpoint_run_data_dir(const std::string& ckpt_dir);

}  // namespace moelab
