#pragma once
// llama.cpp interop: a checkpoint's model as a GGUF file of llama.cpp's `gpt-oss` architecture
// (LLM_ARCH_OPENAI_MOE), with its tokenizer embedded, and such a file written by moelab back as
// a checkpoint. Key names, tensor names, shapes and the graph's math are llama.cpp's at the
// release node-llama-cpp 3.21.1 bundles (src/llama-arch.cpp, src/models/openai-moe.cpp,
// convert_hf_to_gguf's GptOssModel); docs/gguf.md has the table and what is exact, merged or
// refused.
//
// The tensors start from the Hugging Face GptOss mapping (convert/hf.hpp: LoRA and DeRS merged,
// sinks, routers and dense layers' experts synthesised) and change only their names, their
// orientation (gate and up de-interleaved, down transposed) and their storage type.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.hpp"
#include "model/config.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// storage types (ggml_type numbers)

enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };
inline constexpr int64_t kQ8Block = 32;  // QK8_0: values per block (f16 scale + 32 int8)

// Bytes of n values of type t (n a multiple of kQ8Block for Q8_0).
int64_t gguf_type_bytes(GgmlType t, int64_t n);
// ggml's quantize_row_q8_0_ref: per block of 32, d = amax / 127 stored as f16, q = roundf(x / d).
void gguf_quantize_q8_0(std::span<const float> x, std::vector<uint8_t>& out);
std::vector<float> gguf_dequantize(GgmlType t, std::span<const uint8_t> bytes, int64_t n);

// ----------------------------------------------------------------------------
// the file

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] varies fastest
  GgmlType type = GgmlType::F32;
  std::vector<uint8_t> bytes;
};

// Metadata values: the GGUF types llama.cpp checks key by key.
struct GgufValue {
  enum class Kind { U32, I32, F32, Bool, Str, ArrStr, ArrF32, ArrI32, ArrU32 } kind = Kind::U32;
  uint64_t uint_value = 0;  // U32
  int64_t int_value = 0;    // I32
  double float_value = 0;   // F32
  bool bool_value = false;  // Bool
  std::string text;         // Str
  std::vector<std::string> strs;
  std::vector<float> f32s;
  std::vector<int32_t> i32s;
};

struct GgufFile {
  std::vector<std::pair<std::string, GgufValue>> kv;  // in file order
  std::vector<GgufTensor> tensors;
  const GgufValue* find(const std::string& key) const;
};

// GGUF version 3, alignment 32, written to PATH.tmp and renamed.
void gguf_write(const std::string& path, const GgufFile& f);
GgufFile gguf_read(const std::string& path);

// ----------------------------------------------------------------------------
// tokenizers

// A tiktoken encoding as llama.cpp's BPE ("gpt2") vocabulary of `vocab` ids: ranked tokens in
// GPT-2's byte-level form (type normal), the specials as text (type control), other ids as
// [PADn] (type unused), and the merges recovered from the ranks (one per multi-byte token, in
// rank order).
struct GgufBpeVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
};
GgufBpeVocab gguf_bpe_from_tiktoken(const std::string& rank_file, const TiktokenSpec& spec,
                                    int64_t vocab);

// ----------------------------------------------------------------------------
// commands

struct GgufExportOptions {
  std::string checkpoint, out;
  std::string data;           // the data folder with the tokenizer (required: llama.cpp needs one)
  std::string dtype = "f32";  // f32 | f16 | bf16 | q8_0
  std::string reference;      // also write moelab's tokens and log-probs for --prompts here
  std::string prompts;        // a file of prompts, one per line
};
struct GgufExportReport {
  int64_t tensors = 0, bytes = 0;
  std::map<std::string, int64_t> types;  // storage type -> tensors
  std::string tokenizer;                 // what was written for the tokenizer, in words
  nlohmann::json merged;
};
GgufExportReport gguf_export(const GgufExportOptions& o);

struct GgufImportReport {
  int64_t tensors = 0;
  ModelConfig config;
  std::map<std::string, int64_t> types;
};
// The imported checkpoint's trainer state from the file's moelab keys: step 0, the source, the
// tokenizer fingerprint (moelab.tokenizer_fingerprint, a decimal) and what was merged
// (moelab.merged, a JSON object); a malformed key is refused in one line naming it.
nlohmann::json gguf_import_state(const GgufFile& f, const std::string& src);
GgufImportReport gguf_import(const std::string& file, const std::string& out);

}  // namespace moelab
