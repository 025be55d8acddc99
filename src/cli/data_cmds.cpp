// moelab data prepare, moelab data inspect, moelab data verify.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/signals.hpp"
#include "core/sysinfo.hpp"
#include "data/dataset.hpp"
#include "data/shard.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ----------------------------------------------------------------------------
// prepare

namespace {

struct DataPrepareOptions {
  std::string spec, out, preset;
  int threads = 0;
};

void data_prepare_cmd(const DataPrepareOptions& opts) {
  DataPrepareOptions o = opts;
  if (!o.preset.empty()) {
    // A preset: a script fills the cache with converted package data, a spec in configs/data/
    // names the sources and subsets.
    if (!o.spec.empty()) fail("give a spec file or --preset, not both");
    const fs::path src = MOELAB_SOURCE_DIR;
    const fs::path script = src / "scripts" / ("preset_" + o.preset + ".py");
    if (!fs::exists(script))
      fail(fmt::format("--preset {}: no such preset ({} is missing)", o.preset, script.string()));
    const std::string cmd = fmt::format("/usr/bin/python3 '{}' --cache '{}' >/dev/null",
                                        script.string(), moelab_cache_dir());
    const SignalsUnblocked child_signals;  // the script stops on Ctrl-C like any program
    if (std::system(cmd.c_str()) != 0)
      fail(fmt::format("--preset {}: {} failed", o.preset, script.string()));
    o.spec = (src / "configs" / "data" / (o.preset + ".json")).string();
  }
  if (o.spec.empty()) fail("data prepare: give a spec file or --preset NAME");
  const DataSpec spec = data_spec_load(o.spec);
  data_prepare(spec, o.out, o.threads);
  fmt::print("prepared {} (manifest.json)\n", o.out);
}

}  // namespace

void command_data_prepare(CLI::App& data, Commands& c) {
  auto o = std::make_shared<DataPrepareOptions>();
  auto* cmd = data.add_subcommand("prepare", "encode sources into a data directory");
  cmd->add_option("spec", o->spec, "data spec JSON (tokenizer, sources, subsets)");
  cmd->add_option("--preset", o->preset,
                  "fetch and convert package data into the cache, then prepare: default");
  cmd->add_option("--out", o->out, "output data directory")->required();
  cmd->add_option("--threads", o->threads, "encoding threads (default: all cores)");
  c.add(cmd, [o] { return data_prepare_cmd(*o), 0; });
}

// ----------------------------------------------------------------------------
// inspect

namespace {

// Printable form of a decoded token: control characters and newlines escaped.
std::string visible(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20)
      out += fmt::format("\\x{:02x}", c);
    else
      out += char(c);
  }
  return out;
}

// The manifest's fields are read with at(): a damaged manifest fails, never reads out of bounds.
void inspect_manifest(const DataDir& d) {
  const std::string& dir = d.dir;
  const json& m = *d.manifest;
  const json& t = m.at("tokenizer");
  fmt::print("data        {}\n", dir);
  fmt::print("tokenizer   {} (vocab {}, end-of-text id {}, fingerprint {})\n",
             t.at("name").get<std::string>(), d.vocab_size, d.eot,
             t.at("fingerprint").get<std::string>());
  fmt::print("\n{:<18} {:>10} {:>14} {:>10} {:>8} {:>10} {:>13}\n", "source", "documents", "tokens",
             "MB", "MB/s", "malformed", "invalid UTF-8");
  for (auto& [name, s] : m.at("sources").items())
    fmt::print("{:<18} {:>10} {:>14} {:>10.1f} {:>8} {:>10} {:>13}\n", name,
               s.at("documents").get<int64_t>(), s.at("tokens").get<int64_t>(),
               double(s.at("bytes").get<int64_t>()) / 1048576.0, s.at("mb_per_s").dump(),
               s.at("malformed").get<int64_t>(),
               s.value("invalid_utf8_bytes", int64_t(0)));  // absent before it was counted
  for (const std::string& name : d.subset_names) {
    const json& s = m.at("subsets").at(name);
    fmt::print("\nsubset {}: {} train tokens, {} validation tokens\n", name,
               s.at("train_tokens").get<uint64_t>(), s.at("val_tokens").get<uint64_t>());
    // Token frequencies over (up to) the first 20M training tokens.
    std::unordered_map<int32_t, uint64_t> freq;
    std::vector<int32_t> sample;
    uint64_t seen = 0;
    for (const TokenRange& r : d.ranges(name, "train")) {
      const Shard sh(r.shard, d.fingerprint);
      if (r.end > sh.size())
        fail(fmt::format("{}: the manifest range ends at {} but the shard holds {} tokens", r.shard,
                         r.end, sh.size()));
      const uint64_t n = std::min<uint64_t>(r.end - r.begin, 20'000'000 - seen);
      std::vector<int32_t> buf(n);
      sh.copy(buf.data(), r.begin, n);
      for (int32_t x : buf) freq[x]++;
      if (sample.empty()) sample.assign(buf.begin(), buf.begin() + long(std::min<uint64_t>(n, 64)));
      seen += n;
      if (seen >= 20'000'000) break;
    }
    std::vector<std::pair<int32_t, uint64_t>> top(freq.begin(), freq.end());
    std::sort(top.begin(), top.end(), [](auto& a, auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    fmt::print("  most frequent:");
    for (size_t i = 0; i < std::min<size_t>(12, top.size()); i++)
      fmt::print(" {}:'{}' {:.1f}%", top[i].first,
                 visible(d.tokenizer->decode(std::vector<int32_t>{top[i].first})),
                 100.0 * double(top[i].second) / double(seen));
    fmt::print("\n  sample: {}\n", visible(d.tokenizer->decode(sample)));
  }
}

// Prints the manifest summary, token counts, the most frequent tokens and a decoded sample of
// each subset.
void data_inspect(const std::string& dir) {
  const DataDir d = data_open(dir);
  try {
    inspect_manifest(d);
  } catch (const json::exception& e) {
    fail(fmt::format("{}/manifest.json: malformed manifest ({})", dir, e.what()));
  }
}

}  // namespace

void command_data_inspect(CLI::App& data, Commands& c) {
  auto dir = std::make_shared<std::string>();
  auto* cmd = data.add_subcommand("inspect", "summary of a data directory");
  cmd->add_option("dir", *dir, "data directory")->required();
  c.add(cmd, [dir] { return data_inspect(*dir), 0; });
}

// ----------------------------------------------------------------------------
// verify

namespace {

// What the manifest says about the shards, when the directory has one.
struct ManifestView {
  bool present = false;
  std::optional<uint64_t> vocab_size, fingerprint;
  std::map<std::string, uint64_t> shard_tokens;            // file name -> tokens
  std::vector<std::pair<std::string, TokenRange>> ranges;  // "subset/split" -> range
};

struct Verifier {
  std::string dir;
  int64_t problems = 0;
  void problem(const std::string& what) {
    std::fprintf(stderr, "moelab: error: %s\n", one_line(what).c_str());
    problems++;
  }
  std::string file(const std::string& name) const { return (fs::path(dir) / name).string(); }
  ManifestView manifest();
};

ManifestView Verifier::manifest() {
  ManifestView v;
  const std::string path = file("manifest.json");
  std::ifstream f(path);
  if (!f) return v;
  v.present = true;
  try {
    const json m = json::parse(f);
    const json& t = m.at("tokenizer");
    v.vocab_size = t.at("vocab_size").get<uint64_t>();
    v.fingerprint = std::stoull(t.at("fingerprint").get<std::string>(), nullptr, 16);
    for (const auto& [src, s] : m.at("sources").items())
      for (const json& sh : s.at("shards"))
        v.shard_tokens[sh.at("file").get<std::string>()] = sh.at("tokens").get<uint64_t>();
    for (const auto& [sub, s] : m.at("subsets").items())
      for (const char* split : {"train", "val"})
        for (const json& r : s.at(split))
          v.ranges.push_back({sub + "/" + split,
                              {r.at("shard").get<std::string>(), r.at("begin").get<uint64_t>(),
                               r.at("end").get<uint64_t>()}});
  } catch (const std::exception& e) {  // json errors, and stoull on a fingerprint that is no hex
    problem(fmt::format("{}: malformed manifest ({})", path, e.what()));
  }
  return v;
}

// Checks every token shard of a data directory (header, size, checksum, every token id below the
// vocabulary size) and the manifest's shards and ranges against the files. One line on stderr
// per problem, naming the file; returns 1 if there was any, else prints a summary and returns 0.
int data_verify(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(fmt::format("{}: not a directory", dir));
  Verifier v{dir};
  const ManifestView m = v.manifest();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".tok") names.push_back(e.path().filename().string());
  if (ec) fail(fmt::format("{}: cannot list ({})", dir, ec.message()));
  std::sort(names.begin(), names.end());
  for (const auto& [name, _] : m.shard_tokens)
    if (!std::binary_search(names.begin(), names.end(), name))
      v.problem(fmt::format("{}: named in manifest.json but missing", v.file(name)));

  std::map<std::string, uint64_t> tokens_of;  // shards that opened
  uint64_t tokens = 0, bytes = 0, hashed = 0, unlisted = 0, v1 = 0;
  double hash_s = 0;
  for (const std::string& name : names) {
    const std::string path = v.file(name);
    try {
      const Shard s(path, std::nullopt, ShardCheck::Header);
      const ShardHeader& h = s.header();
      tokens_of[name] = h.n_tokens;
      tokens += h.n_tokens, bytes += sizeof(ShardHeader) + h.n_tokens * h.token_bytes;
      v1 += !s.has_checksum();
      const double t0 = time_now_s();
      try {
        s.verify_checksum();
      } catch (const Error& e) {
        v.problem(e.what());
      }
      hash_s += time_now_s() - t0;
      if (s.has_checksum()) hashed += sizeof(ShardHeader) + h.n_tokens * h.token_bytes;
      if (const auto bad = s.tokens_outside_vocab(); bad.count > 0)
        v.problem(
            fmt::format("{}: {} token ids not below the vocabulary size {}, the first at "
                        "token {} ({})",
                        path, bad.count, h.vocab_size, bad.first, bad.first_id));
      if (m.vocab_size && *m.vocab_size != h.vocab_size)
        v.problem(fmt::format("{}: vocabulary size {}, the manifest's tokenizer has {}", path,
                              h.vocab_size, *m.vocab_size));
      if (m.fingerprint && *m.fingerprint != h.tokenizer_fingerprint)
        v.problem(fmt::format("{}: tokenizer fingerprint {:016x}, the manifest's is {:016x}", path,
                              h.tokenizer_fingerprint, *m.fingerprint));
      if (const auto it = m.shard_tokens.find(name); it == m.shard_tokens.end())
        unlisted++;
      else if (it->second != h.n_tokens)
        v.problem(
            fmt::format("{}: {} tokens, manifest.json says {}", path, h.n_tokens, it->second));
    } catch (const Error& e) {
      v.problem(e.what());
    }
  }
  for (const auto& [where, r] : m.ranges) {
    const auto it = tokens_of.find(r.shard);
    if (it != tokens_of.end() && (r.begin > r.end || r.end > it->second))
      v.problem(fmt::format("{}: subset {} takes tokens [{}, {}) of a shard of {}", v.file(r.shard),
                            where, r.begin, r.end, it->second));
    else if (it == tokens_of.end() && !m.shard_tokens.count(r.shard))
      v.problem(fmt::format("{}: named by subset {} in manifest.json but not a shard there",
                            v.file(r.shard), where));
  }
  if (v.problems > 0) return 1;
  if (names.empty()) fail(fmt::format("{}: no token shards (*.tok) to verify", dir));
  fmt::print(
      "{}: {} shards, {} tokens, {:.1f} MB: headers, sizes, checksums and token ids intact "
      "(hashed at {:.1f} GB/s){}{}{}\n",
      dir, names.size(), tokens, double(bytes) / 1048576.0,
      double(hashed) / 1e9 / std::max(hash_s, 1e-9),
      v1 ? fmt::format("; {} version-1 shards have no checksum", v1) : "",
      unlisted ? fmt::format("; {} not named in manifest.json", unlisted) : "",
      m.present ? "" : "; no manifest.json");
  return 0;
}

}  // namespace

void command_data_verify(CLI::App& data, Commands& c) {
  auto dir = std::make_shared<std::string>();
  auto* cmd = data.add_subcommand("verify", "check every shard: header, size, checksum, token ids");
  cmd->add_option("dir", *dir, "data directory")->required();
  c.add(cmd, [dir] { return data_verify(*dir); });
}

}  // namespace moelab
