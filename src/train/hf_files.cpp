// Hugging Face GptOss folders on disk (hf.hpp): model.safetensors in F32 or BF16, tokenizer
// files, and the export and import of whole folders.
#include <fcntl.h>
#include <fmt/format.h>
#include <sentencepiece_processor.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/gemm.hpp"
#include "core/rng.hpp"
#include "core/safetensors.hpp"
#include "data/dataset.hpp"
#include "train/checkpoint.hpp"
#include "train/experiment.hpp"
#include "train/hf.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// ----------------------------------------------------------------------------
// bf16

uint16_t hf_bf16(float x) {
  return bf16_from_float(x);
}

float hf_bf16_float(uint16_t b) {
  return std::bit_cast<float>(uint32_t(b) << 16);
}

namespace {

float f16_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) return std::copysign(std::ldexp(float(m), -24), sign ? -1.f : 1.f);
  if (e == 31) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

// ----------------------------------------------------------------------------
// safetensors (core/safetensors has no BF16; this file writes and reads the formats transformers
// checkpoints come in)

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w <= 0) fail(fmt::format("{}: write failed ({})", path, std::strerror(errno)));
    c += w, n -= size_t(w);
  }
}

}  // namespace

void hf_safetensors_write(const std::string& path, const std::vector<HfTensor>& t, bool bf16) {
  ojson header;
  header["__metadata__"] = {{"format", "pt"}};  // transformers refuses a file without it
  const size_t es = bf16 ? 2 : 4;
  size_t offset = 0;
  for (const HfTensor& x : t) {
    header[x.name] = {{"dtype", bf16 ? "BF16" : "F32"},
                      {"shape", x.shape},
                      {"data_offsets", {offset, offset + x.data.size() * es}}};
    offset += x.data.size() * es;
  }
  std::string hs = header.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');
  const uint64_t hlen = hs.size();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail(fmt::format("{}: cannot write ({})", path, std::strerror(errno)));
  try {
    write_all(fd, &hlen, 8, path);
    write_all(fd, hs.data(), hs.size(), path);
    std::vector<uint16_t> h;
    for (const HfTensor& x : t) {
      if (!bf16) {
        write_all(fd, x.data.data(), x.data.size() * 4, path);
        continue;
      }
      h.resize(x.data.size());
      std::transform(x.data.begin(), x.data.end(), h.begin(), hf_bf16);
      write_all(fd, h.data(), h.size() * 2, path);
    }
    if (::fsync(fd) != 0) fail(fmt::format("{}: fsync failed", path));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) fail(fmt::format("{}: close failed", path));
}

namespace {

// One tensor of a safetensors header, checked against the data section.
HfTensor read_tensor(const std::string& path, const std::string& name, const json& v,
                     const std::string& data) {
  auto bad = [&](std::string_view why) {
    fail(fmt::format("{}: tensor '{}' {}", path, one_line(name, 100), why));
  };
  if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
      !v.contains("data_offsets") || !v["dtype"].is_string() || !v["shape"].is_array() ||
      !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
    bad("has no dtype, shape and data_offsets");
  HfTensor t{name, {}, {}};
  uint64_t n = 1;
  for (const json& s : v["shape"]) {
    if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t(1) << 40)) bad("has a bad shape");
    t.shape.push_back(s.get<int64_t>());
    n *= s.get<uint64_t>();
    if (n > (uint64_t(1) << 40)) bad("is too large");
  }
  const std::string dt = v["dtype"];
  const size_t es = dt == "F32" ? 4 : (dt == "BF16" || dt == "F16") ? 2 : 0;
  if (es == 0) bad(fmt::format("has dtype {} (F32, BF16 or F16 are read)", one_line(dt, 20)));
  const json& off = v["data_offsets"];
  if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) bad("has bad data_offsets");
  const uint64_t a = off[0], b = off[1];
  if (a > b || b > data.size() || b - a != n * es)
    bad("has data_offsets that do not fit its shape or the file");
  t.data.resize(n);
  const char* p = data.data() + a;
  for (uint64_t i = 0; i < n; i++) {
    if (es == 4) {
      std::memcpy(&t.data[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      t.data[i] = dt == "BF16" ? hf_bf16_float(h) : f16_float(h);
    }
  }
  return t;
}

void read_file(const std::string& path, std::map<std::string, HfTensor>& out) {
  std::string bytes;
  try {
    bytes = file_read(path);
  } catch (const std::exception&) {
    fail(fmt::format("{}: cannot read", path));
  }
  uint64_t hlen = 0;
  if (bytes.size() < 8) fail(fmt::format("{}: not a safetensors file (too short)", path));
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8) fail(fmt::format("{}: header length beyond the file", path));
  const json h = json::parse(bytes.substr(8, hlen), nullptr, false);
  if (!h.is_object()) fail(fmt::format("{}: the header is not a JSON object", path));
  const std::string data = bytes.substr(8 + hlen);
  for (auto& [name, v] : h.items()) {
    if (name == "__metadata__") continue;
    if (out.contains(name)) fail(fmt::format("{}: tensor '{}' appears twice", path, name));
    out[name] = read_tensor(path, name, v, data);
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

// The data folder of the tokenizer: --data, else the one of the experiment file the run
// recorded (RUN/run.json beside RUN/step_N). "" when neither says.
std::string tokenizer_dir(const HfExportOptions& o) {
  if (!o.data.empty()) return o.data;
  const fs::path run = fs::path(o.checkpoint).lexically_normal().parent_path() / "run.json";
  std::ifstream f(run);
  const json r = json::parse(f, nullptr, false);
  if (!r.is_object() || !r.contains("experiment") || !r["experiment"].is_string()) return "";
  try {
    return experiment_load(r["experiment"].get<std::string>(), {}).data_dir;
  } catch (const std::exception&) {
    return "";
  }
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
  const std::string data = tokenizer_dir(o);
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
  const json state = checkpoint_load(o.checkpoint, from, nullptr);
  HfPlain plain = hf_plain(from);
  const Model<float>& m = plain.model ? *plain.model : from;
  HfExportReport r;
  ojson hc = hf_config_json(m.cfg);  // refuses what GptOss cannot express, before any writing
  hc["torch_dtype"] = o.bf16 ? "bfloat16" : "float32";
  if (!plain.merged.empty()) hc["moelab"]["merged"] = plain.merged;
  r.merged = plain.merged;
  const std::vector<HfTensor> tensors = hf_tensors(m);
  if (!o.logits.empty()) write_logits(from, o.logits);

  const fs::path dst = fs::path(o.out).lexically_normal();
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
