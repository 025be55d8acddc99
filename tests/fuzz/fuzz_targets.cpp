#include "fuzz_targets.hpp"

#include <cxxabi.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "data/dataset.hpp"
#include "data/entities.hpp"
#include "data/shard.hpp"
#include "eval/evalset.hpp"
#include "model/config.hpp"
#include "train/experiment.hpp"

namespace moelab::fuzz {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The tokenizer fingerprint the evaluation-set seeds carry and the target expects.
constexpr uint64_t kFingerprint = 0x00c0ffee12345678ull;
// ... and the vocabulary it is checked against.
constexpr int32_t kVocab = 64;

// ----------------------------------------------------------------------------
// scratch files

std::string scratch_file(std::string_view name) {
  return scratch_dir() + "/" + std::string(name);
}

void write_file(const std::string& path, std::span<const uint8_t> data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

Bytes read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot read %s\n", path.c_str());
    std::abort();
  }
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

Bytes bytes_of(std::string_view s) {
  return Bytes(s.begin(), s.end());
}

// ----------------------------------------------------------------------------
// running a reader and judging what came out

std::string demangled(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> d(
      abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && d ? d.get() : name;
}

// Runs body(path) on the bytes written to the scratch file `file`. body returns "" when the
// result keeps the reader's promises, else what it broke.
template <typename Body>
Verdict judge(std::span<const uint8_t> data, std::string_view file, Body body) {
  const std::string path = scratch_file(file);
  write_file(path, data);
  Verdict v;
  try {
    v.message = body(path);
    if (!v.message.empty()) v.outcome = Outcome::Invalid;
  } catch (const Error& e) {
    v.message = e.what();
    if (v.message.empty())
      v.outcome = Outcome::Empty;
    else if (v.message.find_first_of("\n\r") != std::string::npos)
      v.outcome = Outcome::MultiLine;
    else
      v.outcome = Outcome::Refused;
    v.names_file = v.message.find(file) != std::string::npos;
  } catch (const std::exception& e) {
    v.outcome = Outcome::Foreign;
    v.message = fmt::format("escaped {}: {}", demangled(typeid(e).name()), e.what());
  } catch (...) {
    v.outcome = Outcome::Foreign;
    v.message = "escaped an exception that is not a std::exception";
  }
  return v;
}

[[noreturn]] void die(std::string_view target, const Verdict& v) {
  std::string m = v.message;
  std::replace(m.begin(), m.end(), '\n', '|');
  std::replace(m.begin(), m.end(), '\r', '|');
  std::fprintf(stderr, "fuzz_%.*s: %s: %s\n", int(target.size()), target.data(),
               outcome_name(v.outcome), m.c_str());
  std::abort();
}

// ----------------------------------------------------------------------------
// the readers

Verdict run_shard(std::span<const uint8_t> data) {
  return judge(data, "tokens.bin", [](const std::string& path) -> std::string {
    // Header checks only, so that damaged tokens reach the reads; the checksum after them.
    const Shard s(path, std::nullopt, ShardCheck::Header);
    // Touch the tokens the header promises: the first and last 64k (all of a small shard).
    const uint64_t n = s.size(), chunk = 1 << 16;
    std::vector<int32_t> buf(size_t(std::min(n, chunk)));
    s.copy(buf.data(), 0, buf.size());
    s.copy(buf.data(), n - buf.size(), buf.size());
    if (n > 0) (void)s.at(n - 1);
    (void)s.tokens_outside_vocab();
    s.verify_checksum();
    return "";
  });
}

Verdict run_safetensors(std::span<const uint8_t> data) {
  return judge(data, "tensors.safetensors", [](const std::string& path) -> std::string {
    static const size_t kSize[] = {4, 8, 4, 8};  // F32, F64, I32, I64
    for (const auto& [name, t] : safetensors_read(path)) {
      int64_t n = 1;
      for (int64_t d : t.shape) {
        if (d < 0) return fmt::format("tensor '{}' accepted with a negative dimension", name);
        if (d > 0 && n > INT64_MAX / d) return fmt::format("tensor '{}': shape overflows", name);
        n *= d;
      }
      if (uint64_t(n) * kSize[int(t.dtype)] != t.data.size())
        return fmt::format("tensor '{}': {} bytes for {} elements", name, t.data.size(), n);
    }
    return "";
  });
}

Verdict run_model_config(std::span<const uint8_t> data) {
  return judge(data, "model.json", [](const std::string& path) -> std::string {
    const ModelConfig c = config_load(path);
    // What every caller does next with an accepted config: count it (UBSan sees overflow).
    (void)config_count(c);
    (void)config_flops(c, std::min<int64_t>(c.max_position_embeddings, 64));
    return "";
  });
}

Verdict run_experiment(std::span<const uint8_t> data) {
  return judge(data, "experiment.toml", [](const std::string& path) -> std::string {
    const Experiment x = experiment_load(path, {});
    (void)x.total_steps();
    return "";
  });
}

Verdict run_evalset(std::span<const uint8_t> data) {
  return judge(data, "evalset.jsonl", [](const std::string& path) -> std::string {
    const EvalSet set = evalset_load(path, kFingerprint, {kVocab, kVocab, 64});
    // What evaluation indexes with must hold for every accepted sample.
    for (size_t i = 0; i < set.samples.size(); i++) {
      const EvalSample& s = set.samples[i];
      if (s.entity < 0 || size_t(s.entity) >= set.names.size())
        return fmt::format("sample {}: entity index {} of {}", i, s.entity, set.names.size());
      if (s.in_prompt.empty() || s.ex_prompt.empty() || s.target.empty())
        return fmt::format("sample {}: accepted with an empty prompt or target", i);
      for (const auto* v : {&s.in_prompt, &s.ex_prompt, &s.target})
        if (std::any_of(v->begin(), v->end(), [](int32_t t) { return t < 0 || t >= kVocab; }))
          return fmt::format("sample {}: accepted with a token id outside [0, {})", i, kVocab);
    }
    return "";
  });
}

Verdict run_entities(std::span<const uint8_t> data) {
  return judge(data, "entities.txt", [](const std::string& path) -> std::string {
    const std::vector<Entity> list = entities_load(path);
    if (list.empty()) return "an empty list accepted";
    for (const Entity& e : list)
      if (e.name.empty()) return "an entity with an empty name accepted";
    return "";
  });
}

// What `moelab data prepare` reads of a data spec file before it touches any source.
Verdict run_data_spec(std::span<const uint8_t> data) {
  return judge(data, "spec.json", [](const std::string& path) -> std::string {
    const DataSpec s = data_spec_load(path);
    if (s.sources.empty() || s.subsets.empty()) return "a spec without sources or subsets";
    return "";
  });
}

const Target kTargets[] = {
    {"shard", false, run_shard, fuzz_shard},
    {"safetensors", false, run_safetensors, fuzz_safetensors},
    {"model_config", true, run_model_config, fuzz_model_config},
    {"experiment", true, run_experiment, fuzz_experiment},
    {"evalset", true, run_evalset, fuzz_evalset},
    {"entities", true, run_entities, fuzz_entities},
    {"data_spec", true, run_data_spec, fuzz_data_spec},
};

// Targets that misbehave on purpose, one per kind of failure, for fuzz_run --self-test.
Verdict self_crash(std::span<const uint8_t> data) {
  return judge(data, "crash", [](const std::string&) -> std::string {
    std::raise(SIGSEGV);
    return "";
  });
}
Verdict self_hang(std::span<const uint8_t> data) {
  return judge(data, "hang", [](const std::string&) -> std::string {
    for (volatile bool forever = true; forever;) {
    }
    return "";
  });
}
Verdict self_multiline(std::span<const uint8_t> data) {
  return judge(data, "multiline", [](const std::string& path) -> std::string {
    throw Error(path + ": first line\nsecond line");  // fail() would escape the line break
  });
}
Verdict self_foreign(std::span<const uint8_t> data) {
  return judge(data, "foreign", [](const std::string&) -> std::string {
    return std::vector<int>{}.at(1) ? "" : "";
  });
}
Verdict self_invalid(std::span<const uint8_t> data) {
  return judge(data, "invalid",
               [](const std::string&) -> std::string { return "a broken promise"; });
}
void no_entry(std::span<const uint8_t>) {}

const Target kSelfTest[] = {
    {"crash", false, self_crash, no_entry},        {"hang", false, self_hang, no_entry},
    {"multiline", true, self_multiline, no_entry}, {"foreign", true, self_foreign, no_entry},
    {"invalid", true, self_invalid, no_entry},
};

void enforce(std::string_view target, const Verdict& v) {
  if (!v.ok()) die(target, v);
}

// ----------------------------------------------------------------------------
// seeds: valid inputs written by the project's own writers

std::string source_file(const std::string& rel) {
  return (fs::path(MOELAB_SOURCE_DIR) / rel).string();
}

std::vector<Bytes> shard_seeds() {
  std::vector<Bytes> out;
  auto make = [&](uint64_t vocab, std::vector<std::vector<int32_t>> docs) {
    const std::string path = scratch_file("seed.bin");
    ShardWriter w(path, vocab, 0x5eed);
    for (const auto& d : docs) w.append_document(d);
    w.close();
    out.push_back(read_file(path));
  };
  make(1000, {{1, 2, 3, 999}, {0, 7, 7, 7, 42}, {5}});  // 16-bit tokens
  make(100000, {{99999, 0, 65536, 12}, {3, 4}});        // 32-bit tokens
  make(50, {});                                         // no documents
  return out;
}

std::vector<Bytes> safetensors_seeds() {
  std::vector<Bytes> out;
  const std::string path = scratch_file("seed.safetensors");
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  const std::vector<double> d = {0.5};
  const std::vector<int32_t> i32 = {-1, 2, 3};
  const std::vector<int64_t> i64 = {1, 1ll << 40};
  std::vector<TensorRef> ts = {
      tensor_ref<float>("model.embed.weight", f, {2, 3}),
      tensor_ref<double>("step", d, {}),
      tensor_ref<int32_t>("ids", i32, {3}),
      tensor_ref<int64_t>("rng", i64, {2, 1}),
  };
  safetensors_write(path, ts, {{"format", "pt"}, {"step", "12"}});
  out.push_back(read_file(path));
  safetensors_write(path, std::span(ts).first(1));
  out.push_back(read_file(path));
  safetensors_write(path, {});
  out.push_back(read_file(path));
  return out;
}

std::vector<Bytes> model_config_seeds() {
  std::vector<Bytes> out;
  for (const char* f : {"configs/models/tiny.json", "configs/models/demo-dense.json"})
    out.push_back(read_file(source_file(f)));
  ModelConfig yarn;
  yarn.yarn_factor = 4;
  yarn.sliding_window = 32;
  yarn.layer_sliding = {true, false, true, false};
  out.push_back(bytes_of(config_to_json(yarn).dump(2)));
  // A bench or experiment file with the config under "model".
  out.push_back(bytes_of(json{{"model", config_to_json(ModelConfig{})}, {"seq", 64}}.dump()));
  return out;
}

// The repository's experiment files, with the model config named by an absolute path (the
// reader opens it relative to the working directory).
std::vector<Bytes> experiment_seeds() {
  std::vector<Bytes> out;
  for (const char* f : {"configs/default.toml", "configs/forgetting-paper.toml"}) {
    const Bytes b = read_file(source_file(f));
    std::string s(b.begin(), b.end());
    const std::string rel = "\"configs/models/";
    for (size_t at = s.find(rel); at != std::string::npos; at = s.find(rel, at + 1))
      s.replace(at, rel.size(), "\"" + source_file("configs/models/"));
    out.push_back(bytes_of(s));
  }
  out.push_back(bytes_of(R"(# inline model, two phases with replay
[run]
dir = "runs/x"
seed = 3
[model]
vocab_size = 512
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 16
intermediate_size = 64
max_position_embeddings = 64
[data]
dir = "data/x"
seq_len = 32
[train]
batch_size = 2
grad_accum = 2
[schedule]
kind = "cosine"
max_lr = 1e-3
warmup_steps = 2
decay_at = "7"
[[phases]]
name = "A"
subset = "A"
steps = 10
[[phases]]
name = "B"
subset = "B"
tokens = 1_000
replay_subset = "A"
replay_ratio = 0.25
[eval]
every = 5
filter_after = "A"
forgetting_every = 2
[study]
experts = [1, 4]
top_k = 1
seeds = [1, 2]
)"));
  return out;
}

std::vector<Bytes> evalset_seeds() {
  std::vector<Bytes> out;
  const std::string path = scratch_file("seed.jsonl");
  EvalSet set;
  set.fingerprint = kFingerprint;
  set.names = {"Moses", "New York"};
  set.types = {"PER", "LOC"};
  set.samples = {{0, "Moses", {5, 6, 7, 8}, {4, 5, 6, 7}, {9, 10, 11}},
                 {1, "new york", {1, 2, 3, 4}, {0, 1, 2, 3}, {12, 13, 14}},
                 {0, "MOSES", {7, 8, 5, 6}, {2, 7, 8, 5}, {1, 1, 1}}};
  evalset_write(path, set);
  out.push_back(read_file(path));
  set.samples.resize(1);
  set.subset = "B";
  evalset_write(path, set);
  out.push_back(read_file(path));
  return out;
}

std::vector<Bytes> entities_seeds() {
  return {bytes_of("Moses\tPER\nJerusalem\tLOC\nnew_york_city\nAcme Corp\tORG\n\nMoses\n"),
          bytes_of("Aaron\r\nEgypt\tLOC\r\n  Pharaoh  \r\n"),
          bytes_of("Jesus\tPER\nGalilee\tLOC\nPharisees\tMISC\n")};
}

std::vector<Bytes> data_spec_seeds() {
  std::vector<Bytes> out;
  for (const char* f : {"configs/data/default.json", "configs/data/fineweb-edu.json"})
    out.push_back(read_file(source_file(f)));
  out.push_back(bytes_of(R"({"tokenizer": {"kind": "tiktoken", "encoding": "cl100k_base"},
 "sources": {"a": {"paths": ["a.txt", "/abs/b"], "format": "text"},
             "w": {"paths": ["w.jsonl"], "format": "jsonl", "text_field": "body"}},
 "subsets": {"A": ["a"], "B": [{"source": "w", "begin": 0.25, "end": 0.5}]},
 "validation_fraction": 0.1, "shard_tokens": 1000})"));
  return out;
}

}  // namespace

// ----------------------------------------------------------------------------
// public

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::Accepted:
      return "accepted";
    case Outcome::Refused:
      return "refused";
    case Outcome::MultiLine:
      return "multi-line error message";
    case Outcome::Empty:
      return "empty error message";
    case Outcome::Foreign:
      return "foreign exception";
    case Outcome::Invalid:
      return "accepted an invalid input";
  }
  return "?";
}

void fuzz_shard(std::span<const uint8_t> d) {
  enforce("shard", run_shard(d));
}
void fuzz_safetensors(std::span<const uint8_t> d) {
  enforce("safetensors", run_safetensors(d));
}
void fuzz_model_config(std::span<const uint8_t> d) {
  enforce("model_config", run_model_config(d));
}
void fuzz_experiment(std::span<const uint8_t> d) {
  enforce("experiment", run_experiment(d));
}
void fuzz_evalset(std::span<const uint8_t> d) {
  enforce("evalset", run_evalset(d));
}
void fuzz_entities(std::span<const uint8_t> d) {
  enforce("entities", run_entities(d));
}
void fuzz_data_spec(std::span<const uint8_t> d) {
  enforce("data_spec", run_data_spec(d));
}

std::span<const Target> targets() {
  return kTargets;
}

std::span<const Target> self_test_targets() {
  return kSelfTest;
}

const Target* find_target(std::string_view name) {
  for (const Target& t : kTargets)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<Bytes> seeds(std::string_view target) {
  if (target == "shard") return shard_seeds();
  if (target == "safetensors") return safetensors_seeds();
  if (target == "model_config") return model_config_seeds();
  if (target == "experiment") return experiment_seeds();
  if (target == "evalset") return evalset_seeds();
  if (target == "entities") return entities_seeds();
  if (target == "data_spec") return data_spec_seeds();
  return {};
}

const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string d = fmt::format("{}/moelab-fuzz-{}", tmp && *tmp ? tmp : "/tmp", ::getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

void scratch_remove() {
  std::error_code ec;
  fs::remove_all(scratch_dir(), ec);
}

}  // namespace moelab::fuzz
