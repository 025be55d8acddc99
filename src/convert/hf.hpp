#pragma once
// Hugging Face interop: a checkpoint's model as a folder that transformers' GptOssForCausalLM
// loads (config.json, model.safetensors, tokenizer files), and such a folder back as a moelab
// checkpoint. Names, shapes and layouts are those of transformers' models/gpt_oss
// (modeling_gpt_oss.py at commit 00d4b3d2142cb4ced2f51b90614b5d26bc045015, configuration keys of
// GptOssConfig; docs/hf.md has the table and what is exact, merged or refused).
//
// Our tensor names are already transformers' names, and the expert matrices already its layout
// ([E, in, out], gate and up interleaved on the last axis of gate_up_proj), so the tensors of a
// plain model travel as they are; the mapping only synthesises what GptOss always has and a
// moelab config may lack (a router for dense layers, sinks) and drops it again on import.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.hpp"
#include "model/model.hpp"

namespace moelab {

// The values transformers' GptOssExperts hard-codes (self.alpha, self.limit at the pinned commit).
inline constexpr double kHfSwigluAlpha = 1.702;
inline constexpr double kHfSwigluLimit = 7.0;

// ----------------------------------------------------------------------------
// config.json

// transformers' config.json for a plain model (no LoRA, DeRS or MoE-CT: see hf_plain). Refuses,
// naming the key, what GptOss cannot express. Facts only moelab reads go under "moelab" so that
// hf_config_parse restores the config exactly.
nlohmann::ordered_json hf_config_json(const ModelConfig& c);
// The moelab config a GptOss config.json describes (HF defaults for absent keys, as GptOssConfig
// has them). Refuses quantized files, unknown keys and values whose meaning differs between
// transformers versions. `src` starts every error.
ModelConfig hf_config_parse(const nlohmann::json& j, std::string_view src);

// ----------------------------------------------------------------------------
// tensors

struct HfTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major
};

// The GptOss tensors of a config (names and shapes, data empty), in transformers' order: the
// table docs/hf.md shows.
std::vector<HfTensor> hf_layout(const ModelConfig& c);
// A plain model's weights as GptOss tensors. Refuses a nonzero router balance bias.
std::vector<HfTensor> hf_tensors(const Model<float>& m);

// The name of a router.balance_bias tensor that is not all zero, or "" (a bias for the top-k
// choice alone, which neither GptOss nor llama.cpp's gpt-oss router has).
std::string hf_nonzero_balance_bias(const Model<float>& m);
// Fills a plain model from GptOss tensors (by name, shapes checked); every tensor of the file
// must be used or be one hf_tensors synthesises. `src` starts every error.
void hf_tensors_load(const std::map<std::string, HfTensor>& t, Model<float>& m,
                     std::string_view src);

// A plain model computing the checkpoint model's function: LoRA adapters merged into their
// weights, DeRS experts rebuilt as full experts (base + delta). `merged` says what was merged
// (empty: the same model). MoE-CT is refused.
struct HfPlain {
  std::unique_ptr<Model<float>> model;
  nlohmann::json merged = nlohmann::json::object();
};
HfPlain hf_plain(const Model<float>& m);

// ----------------------------------------------------------------------------
// files

// model.safetensors in F32 or BF16 (rounded to nearest even: core/safetensors' conversions),
// with the metadata {"format": "pt"} that transformers requires.
void hf_safetensors_write(const std::string& path, const std::vector<HfTensor>& t, bool bf16);
// A safetensors file (F32, BF16 or F16 tensors, as float), or every shard a
// model.safetensors.index.json names.
std::map<std::string, HfTensor> hf_safetensors_read(const std::string& path);

// ----------------------------------------------------------------------------
// commands

struct HfExportOptions {
  std::string checkpoint, out;
  std::string data;    // the data folder with the tokenizer ("": none is written)
  bool bf16 = false;   // weights in bf16 (round to nearest even), else f32
  std::string logits;  // also write moelab's logits for fixed tokens to this file
};
struct HfExportReport {
  int64_t tensors = 0, bytes = 0;
  std::string tokenizer;  // what was written for the tokenizer, in words
  nlohmann::json merged;
};
HfExportReport hf_export(const HfExportOptions& o);

struct HfImportReport {
  int64_t tensors = 0;
  ModelConfig config;
};
HfImportReport hf_import(const std::string& dir, const std::string& out);

}  // namespace moelab
