#include "cli/data_cmds.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.hpp"
#include "data/dataset.hpp"
#include "data/shard.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

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
    if (std::system(cmd.c_str()) != 0)
      fail(fmt::format("--preset {}: {} failed", o.preset, script.string()));
    o.spec = (src / "configs" / "data" / (o.preset + ".json")).string();
  }
  if (o.spec.empty()) fail("data prepare: give a spec file or --preset NAME");
  std::ifstream f(o.spec);
  if (!f) fail(o.spec + ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::parse_error& e) {
    fail(fmt::format("{}: invalid JSON ({})", o.spec, e.what()));
  }
  const DataSpec spec = data_spec_from_json(j, o.spec, fs::absolute(o.spec).parent_path().string());
  data_prepare(spec, o.out, o.threads);
  fmt::print("prepared {} (manifest.json)\n", o.out);
}

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

}  // namespace

void data_inspect(const std::string& dir) {
  const DataDir d = data_open(dir);
  const json& m = *d.manifest;
  const json& t = m["tokenizer"];
  fmt::print("data        {}\n", dir);
  fmt::print("tokenizer   {} (vocab {}, end-of-text id {}, fingerprint {})\n",
             t["name"].get<std::string>(), d.vocab_size, d.eot,
             t["fingerprint"].get<std::string>());
  fmt::print("\n{:<18} {:>10} {:>14} {:>10} {:>8} {:>10}\n", "source", "documents", "tokens", "MB",
             "MB/s", "malformed");
  for (auto& [name, s] : m["sources"].items())
    fmt::print("{:<18} {:>10} {:>14} {:>10.1f} {:>8} {:>10}\n", name, s["documents"].get<int64_t>(),
               s["tokens"].get<int64_t>(), double(s["bytes"].get<int64_t>()) / 1048576.0,
               s["mb_per_s"].dump(), s["malformed"].get<int64_t>());
  for (const std::string& name : d.subset_names) {
    const json& s = m["subsets"][name];
    fmt::print("\nsubset {}: {} train tokens, {} validation tokens\n", name,
               s["train_tokens"].get<uint64_t>(), s["val_tokens"].get<uint64_t>());
    // Token frequencies over (up to) the first 20M training tokens.
    std::unordered_map<int32_t, uint64_t> freq;
    std::vector<int32_t> sample;
    uint64_t seen = 0;
    for (const TokenRange& r : d.ranges(name, "train")) {
      const Shard sh(r.shard, d.fingerprint);
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

}  // namespace moelab
