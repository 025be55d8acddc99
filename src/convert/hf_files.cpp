// Hugging Face GptOss folders on disk (hf.hpp): model.safetensors in F32 or BF16, tokenizer
// files, and the export and import of whole folders.
#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "convert/checkpoint.hpp"
#include "convert/hf.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/rng.hpp"
#include "core/safetensors.hpp"
#include "data/dataset.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// ----------------------------------------------------------------------------
// safetensors: the formats transformers checkpoints come in (core/safetensors reads and writes
// them; here they become float tensors)

void hf_safetensors_write(const std::string& path, const std::vector<HfTensor>& t, bool bf16) {
  std::vector<std::vector<uint16_t>> halves;  // keeps the bf16 copies alive until written
  halves.reserve(t.size());
  std::vector<TensorRef> refs;
  for (const HfTensor& x : t) {
    if (!bf16) {
      refs.push_back(tensor_ref<float>(x.name, x.data, x.shape));
      continue;
    }
    halves.push_back(safetensors_half(DType::BF16, x.data));
    refs.push_back({x.name, DType::BF16, x.shape, std::as_bytes(std::span(halves.back()))});
  }
  // transformers refuses a file without {"format": "pt"}
  safetensors_write(path, refs, {{"format", "pt"}});
}

namespace {

void read_file(const std::string& path, std::map<std::string, HfTensor>& out) {
  for (auto& [name, d] : safetensors_read(path, DTypes::WithHalf)) {
    if (d.dtype != DType::F32 && d.dtype != DType::BF16 && d.dtype != DType::F16)
      fail(fmt::format("{}: tensor '{}' has dtype {} (F32, BF16 or F16 are read)", path,
                       one_line(name, 100), safetensors_dtype_name(d.dtype)));
    if (out.contains(name)) fail(fmt::format("{}: tensor '{}' appears twice", path, name));
    out[name] = {name, d.shape, d.floats()};
  }
}

}  // namespace

std::map<std::string, HfTensor> hf_safetensors_read(const std::string& path) {
  std::map<std::string, HfTensor> out;
  if (!path.ends_with(".index.json")) {
    read_file(path, out);
    return out;
  }
  std::ifstream f(path);
  const json idx = json::parse(f, nullptr, false);
  if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
    fail(fmt::format("{}: no weight_map", path));
  std::set<std::string> files;
  for (auto& [_, file] : idx["weight_map"].items())
    if (file.is_string()) files.insert(file.get<std::string>());
  for (const std::string& file : files)
    read_file((fs::path(path).parent_path() / file).string(), out);
  return out;
}

// ----------------------------------------------------------------------------
// tokenizer

namespace {

void write_json_file(const fs::path& p, const ojson& j) {
  file_write_synced(p.string(), j.dump(2) + "\n");
}

// A SentencePiece tokenizer as transformers' slow LlamaTokenizer reads it: the model file as it
// is, no BOS/EOS added (moelab's encode adds none), legacy (plain sp.encode) splitting.
std::string write_sentencepiece(const std::string& model, const fs::path& dir, ojson& cfg,
                                int64_t max_pos) {
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load(model).ok()) fail(fmt::format("{}: not a SentencePiece model", model));
  fs::copy_file(model, dir / "tokenizer.model");
  auto piece = [&](int id) { return id >= 0 ? json(sp.IdToPiece(id)) : json(nullptr); };
  cfg["bos_token_id"] = sp.bos_id() >= 0 ? json(sp.bos_id()) : json(nullptr);
  cfg["eos_token_id"] = sp.eos_id();
  cfg["pad_token_id"] = sp.pad_id() >= 0 ? json(sp.pad_id()) : json(nullptr);
  ojson special = {{"bos_token", piece(sp.bos_id())},
                   {"eos_token", piece(sp.eos_id())},
                   {"unk_token", piece(sp.unk_id())},
                   {"pad_token", piece(sp.pad_id())}};
  ojson tc = {{"tokenizer_class", "LlamaTokenizer"},
              {"add_bos_token", false},
              {"add_eos_token", false},
              {"legacy", true},
              {"add_prefix_space", nullptr},
              {"clean_up_tokenization_spaces", false},
              {"spaces_between_special_tokens", false},
              {"sp_model_kwargs", json::object()},
              {"model_max_length", max_pos}};
  tc.update(special);
  write_json_file(dir / "tokenizer_config.json", tc);
  write_json_file(dir / "special_tokens_map.json", special);
  return fmt::format("SentencePiece {} (LlamaTokenizer, use_fast=False)", model);
}

// Tokenizer files for the export, and the token ids config.json names; what was done, in words.
std::string export_tokenizer(const HfExportOptions& o, const json& state, const fs::path& dir,
                             ojson& cfg) {
  const std::string& data = o.data;
  if (data.empty()) return "none (no --data, and the run names no data folder)";
  const DataDir d = data_open(data);
  checkpoint_check_tokenizer(o.checkpoint, state, d.fingerprint, data);
  cfg["moelab"]["tokenizer_fingerprint"] = d.fingerprint;
  const json& t = d.manifest->at("tokenizer");
  if (t.at("kind") != "sentencepiece") {
    cfg["eos_token_id"] = d.eot;
    return fmt::format("none ({} has no transformers tokenizer file written here; eos id {})",
                       t.value("name", std::string("tiktoken")), d.eot);
  }
  const std::string model = (fs::path(data) / t.at("file").get<std::string>()).string();
  return write_sentencepiece(model, dir, cfg, cfg["max_position_embeddings"].get<int64_t>());
}

// moelab's logits for fixed tokens (T = min(32, positions)), to check the export against another
// implementation of GptOss: input.tokens [1, T] and output.logits [1, T, V].
void write_logits(Model<float>& m, const std::string& path) {
  const int64_t T = m.N, V = m.cfg.vocab_size;
  std::vector<int32_t> tokens(static_cast<size_t>(T)), targets(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; i++)
    tokens[size_t(i)] = int32_t(rng_u64(20250807, 1, uint64_t(i)) % uint64_t(V));
  for (int64_t i = 0; i < T; i++) targets[size_t(i)] = tokens[size_t((i + 1) % T)];
  m.forward(tokens, targets);
  const std::vector<float> logits(m.logits().begin(), m.logits().end());
  const std::vector<TensorRef> refs = {tensor_ref<int32_t>("input.tokens", tokens, {1, T}),
                                       tensor_ref<float>("output.logits", logits, {1, T, V})};
  safetensors_write(path, refs);
}

}  // namespace

// ----------------------------------------------------------------------------
// export and import

HfExportReport hf_export(const HfExportOptions& o) {
  const ModelConfig cfg = checkpoint_export_begin(o.checkpoint, o.out);
  std::error_code ec;
  Model<float> from(cfg, 1, std::min<int64_t>(32, cfg.max_position_embeddings));
  const json state = checkpoint_load_model(o.checkpoint, from);
  HfPlain plain = hf_plain(from);
  const Model<float>& m = plain.model ? *plain.model : from;
  HfExportReport r;
  ojson hc = hf_config_json(m.cfg);  // refuses what GptOss cannot express, before any writing
  hc["torch_dtype"] = o.bf16 ? "bfloat16" : "float32";
  if (!plain.merged.empty()) hc["moelab"]["merged"] = plain.merged;
  r.merged = plain.merged;
  const std::vector<HfTensor> tensors = hf_tensors(m);
  if (!o.logits.empty()) write_logits(from, o.logits);

  fs::path dst = fs::path(o.out).lexically_normal();
  if (!dst.has_filename()) {
    dst = dst.parent_path();  // --out DIR/: the folder DIR, not a nameless one inside it
  }
  const fs::path tmp = dst.parent_path() / fmt::format(".{}.tmp", dst.filename().string());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) fail(fmt::format("--out {}: cannot write ({})", o.out, ec.message()));
  try {
    r.tokenizer = export_tokenizer(o, state, tmp, hc);
    hf_safetensors_write((tmp / "model.safetensors").string(), tensors, o.bf16);
    write_json_file(tmp / "config.json", hc);
    file_fsync(tmp.string());
    fs::rename(tmp, dst);
    file_fsync_parent(dst.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  r.tensors = int64_t(tensors.size());
  r.bytes = int64_t(fs::file_size(dst / "model.safetensors"));
  return r;
}

HfImportReport hf_import(const std::string& dir, const std::string& out) {
  std::error_code ec;
  if (fs::exists(out, ec) || fs::is_symlink(out, ec))
    fail(fmt::format("--out {}: already exists (import never replaces a folder)", out));
  const std::string cpath = (fs::path(dir) / "config.json").string();
  std::ifstream f(cpath);
  if (!f) fail(fmt::format("{}: no config.json (not a Hugging Face model folder)", dir));
  const json j = json::parse(f, nullptr, false);
  if (j.is_discarded()) fail(fmt::format("{}: invalid JSON", cpath));
  HfImportReport r;
  r.config = hf_config_parse(j, cpath);
  std::string weights = (fs::path(dir) / "model.safetensors").string();
  if (!fs::exists(weights, ec)) weights += ".index.json";  // sharded
  if (!fs::exists(weights, ec))
    fail(fmt::format("{}: no model.safetensors (nor model.safetensors.index.json)", dir));
  const auto tensors = hf_safetensors_read(weights);
  Model<float> m(r.config, 1, 1);
  hf_tensors_load(tensors, m, weights);
  json state = {{"step", 0}, {"imported_from", dir}};
  if (j.contains("moelab") && j["moelab"].is_object()) {
    const json& x = j["moelab"];
    if (x.contains("tokenizer_fingerprint") && x["tokenizer_fingerprint"].is_number_unsigned())
      state["tokenizer_fingerprint"] = x["tokenizer_fingerprint"];
    if (x.contains("merged")) state["merged"] = x["merged"];
  }
  checkpoint_write_model(out, m, state);
  r.tensors = int64_t(m.layout.tensors.size());
  return r;
}

}  // namespace moelab
