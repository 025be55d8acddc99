// Opening data directories and the sequence loader.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/dataset.hpp"
#include "data/shard.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

DataDir data_open(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  std::ifstream f(path);
  if (!f) fail(fmt::format("{}: no manifest.json (not a prepared data directory)", dir));
  DataDir d;
  d.dir = dir;
  d.manifest = std::make_shared<json>();
  try {
    *d.manifest = json::parse(f);
    const json& t = d.manifest->at("tokenizer");
    const std::string file = (fs::path(dir) / t.at("file").get<std::string>()).string();
    if (t.at("kind") == "tiktoken")
      d.tokenizer = tiktoken_load(file, tiktoken_spec(t.at("encoding").get<std::string>()));
    else
      d.tokenizer = sentencepiece_load(file);
    const std::string want = t.at("fingerprint").get<std::string>();
    if (fmt::format("{:016x}", d.tokenizer->fingerprint()) != want)
      fail(fmt::format("{}: the tokenizer's fingerprint {:016x} does not match the manifest's {}",
                       path, d.tokenizer->fingerprint(), want));
    for (auto& [name, _] : d.manifest->at("subsets").items()) d.subset_names.push_back(name);
  } catch (const json::exception& e) {
    fail(fmt::format("{}: malformed manifest ({})", path, e.what()));
  }
  d.fingerprint = d.tokenizer->fingerprint();
  d.vocab_size = d.tokenizer->vocab_size();
  d.eot = d.tokenizer->eot_id();
  return d;
}

std::vector<TokenRange> DataDir::ranges(const std::string& subset, const std::string& split) const {
  const json& subs = manifest->at("subsets");
  if (!subs.contains(subset)) {
    std::string known;
    for (const auto& n : subset_names) known += (known.empty() ? "" : ", ") + n;
    fail(fmt::format("{}: no subset '{}' (has: {})", dir, subset, known));
  }
  if (split != "train" && split != "val")
    fail(fmt::format("split '{}': must be train or val", split));
  std::vector<TokenRange> out;
  try {
    for (const json& r : subs.at(subset).at(split)) {
      const std::string shard = r.at("shard").get<std::string>();
      // A name inside the directory: a manifest never points elsewhere.
      if (shard.empty() || shard.find('/') != std::string::npos || shard[0] == '.')
        fail(
            fmt::format("{}/manifest.json: subset '{}' names the shard '{}', not a file name in "
                        "the directory",
                        dir, subset, shard));
      TokenRange t{(fs::path(dir) / shard).string(), r.at("begin").get<uint64_t>(),
                   r.at("end").get<uint64_t>()};
      if (t.begin > t.end)
        fail(
            fmt::format("{}/manifest.json: subset '{}' has a range of {} that begins after it "
                        "ends",
                        dir, subset, shard));
      out.push_back(t);
    }
  } catch (const json::exception& e) {
    fail(fmt::format("{}/manifest.json: malformed subset '{}' ({})", dir, subset, e.what()));
  }
  return out;
}

// ----------------------------------------------------------------------------
// loader

DataLoader::DataLoader(const DataDir& data, const std::string& subset, const std::string& split,
                       int64_t seq_len, uint64_t seed)
    : ranges_(data.ranges(subset, split)), seed_(seed), seq_len_(seq_len) {
  if (seq_len < 1) fail("loader: sequence length must be positive");
  std::map<std::string, std::shared_ptr<Shard>> by_path;  // ranges of one shard share its map
  for (const TokenRange& r : ranges_) {
    starts_.push_back(total_);
    total_ += r.end - r.begin;
    auto& shard = by_path[r.shard];
    if (!shard) {
      shard = std::make_shared<Shard>(r.shard, data.fingerprint);
      // The fingerprint says which tokenizer; a damaged version-1 header could still claim a
      // larger vocabulary than the model's, and ids are checked against the header's.
      if (int64_t(shard->header().vocab_size) != data.vocab_size)
        fail(fmt::format("{}: vocabulary size {} does not match the tokenizer's {}", r.shard,
                         shard->header().vocab_size, data.vocab_size));
    }
    shards_.push_back(shard);
    if (r.end > shard->size())
      fail(fmt::format("{}: the manifest range ends at {} but the shard holds {} tokens", r.shard,
                       r.end, shard->size()));
  }
  // Sequences of seq_len inputs and their seq_len next-token targets, stepping by seq_len.
  n_seq_ = total_ > uint64_t(seq_len) ? (total_ - 1) / uint64_t(seq_len) : 0;
  if (n_seq_ == 0)
    fail(fmt::format("{}: subset '{}' ({}) has {} tokens, fewer than one sequence of {}", data.dir,
                     subset, split, total_, seq_len + 1));
}

// A seeded bijection of [0, n_seq) per epoch: an invertible mix on the next power of two,
// cycle-walked into range. No permutation table, so it costs nothing at any data size.
uint64_t DataLoader::sequence_at(uint64_t epoch, uint64_t i) const {
  const int bits = std::max(1, int(std::bit_width(n_seq_ - 1)));
  const uint64_t mask = bits >= 64 ? ~0ull : (1ull << bits) - 1;
  const uint64_t key = rng_mix(seed_ ^ rng_mix(epoch + 1));
  uint64_t x = i;
  do {
    for (int round = 0; round < 4; round++) {
      x = (x * ((rng_mix(key + uint64_t(round)) | 1)) + rng_mix(key ^ uint64_t(round))) & mask;
      x ^= x >> (bits / 2 + 1);
    }
  } while (x >= n_seq_);
  return x;
}

void DataLoader::read(uint64_t begin, uint64_t n, int32_t* dst) const {
  size_t k = size_t(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  while (n > 0) {
    const TokenRange& r = ranges_[k];
    const uint64_t off = begin - starts_[k], take = std::min(n, (r.end - r.begin) - off);
    shards_[k]->copy(dst, r.begin + off, take);
    dst += take, begin += take, n -= take, k++;
  }
}

void DataLoader::read_sequence(uint64_t s, int32_t* tokens, int32_t* targets) const {
  if (s >= n_seq_) fail(fmt::format("loader: sequence {} is past the end ({})", s, n_seq_));
  // The targets are the same stream one token on.
  read(s * uint64_t(seq_len_), uint64_t(seq_len_), tokens);
  read(s * uint64_t(seq_len_) + 1, uint64_t(seq_len_), targets);
}

void DataLoader::next(int64_t batch, std::vector<int32_t>& tokens, std::vector<int32_t>& targets,
                      std::vector<uint64_t>* ids) {
  tokens.resize(size_t(batch * seq_len_));
  targets.resize(size_t(batch * seq_len_));
  if (ids) ids->clear();
  for (int64_t b = 0; b < batch; b++) {
    const uint64_t s = sequence_at(pos_.epoch, pos_.index);
    read_sequence(s, tokens.data() + b * seq_len_, targets.data() + b * seq_len_);
    if (ids) ids->push_back(s);
    if (++pos_.index == n_seq_) pos_ = {pos_.epoch + 1, 0};
  }
}

void DataLoader::skip(int64_t n, std::vector<uint64_t>& ids) {
  for (int64_t b = 0; b < n; b++) {
    ids.push_back(sequence_at(pos_.epoch, pos_.index));
    if (++pos_.index == n_seq_) pos_ = {pos_.epoch + 1, 0};
  }
}

void DataLoader::seek(LoaderPosition p) {
  if (p.index >= n_seq_) fail("loader: saved position is past the end of the subset");
  pos_ = p;
}

}  // namespace moelab
