#pragma once
// Tokenizers behind one interface: tiktoken-format byte-pair encodings (r50k/GPT-2, p50k,
// cl100k, o200k and gpt-oss's o200k_harmony), with pre-tokenisation by PCRE2, and
// SentencePiece models. Every tokenizer has a fingerprint (a hash of its vocabulary) that is
// stored with everything encoded by it.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text to ids; special tokens written in the text (e.g. "<|endoftext|>") become their ids.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eot_id() const = 0;  // the end-of-text token placed between documents
  virtual std::string eot_text() const { return {}; }  // its name, e.g. "<|endoftext|>" or "</s>"
  virtual uint64_t fingerprint() const = 0;
  virtual std::string name() const = 0;
};

// 64-bit FNV-1a, the hash behind fingerprints.
uint64_t fnv1a(std::string_view bytes, uint64_t h = 0xcbf29ce484222325ull);

// ----------------------------------------------------------------------------
// tiktoken

struct TiktokenSpec {
  std::string name;                        // e.g. "o200k_base"
  std::string pattern;                     // pre-tokenisation regex (PCRE2 syntax)
  std::map<std::string, int32_t> special;  // special token text -> id
  std::string eot = "<|endoftext|>";
  std::string ranks;  // the rank file it uses: NAME.tiktoken (e.g. o200k_harmony -> o200k_base)
};

// The standard encodings by name: r50k_base (gpt2), p50k_base, p50k_edit, cl100k_base,
// o200k_base, o200k_harmony. Fails on an unknown name.
TiktokenSpec tiktoken_spec(const std::string& name);

// Loads a .tiktoken rank file (lines "base64(bytes) rank").
std::unique_ptr<Tokenizer> tiktoken_load(const std::string& rank_file, const TiktokenSpec& spec);

// ----------------------------------------------------------------------------
// SentencePiece

struct SentencePieceTrainOptions {
  int64_t vocab_size = 4096;
  std::string model_type = "bpe";   // bpe | unigram
  int64_t max_sentences = 2000000;  // sample of the input lines used for training
  int threads = 2;
};

// Trains on a text file (one sentence per line) and writes PREFIX.model / PREFIX.vocab.
void sentencepiece_train(const std::string& input, const std::string& model_prefix,
                         const SentencePieceTrainOptions& o);
std::unique_ptr<Tokenizer> sentencepiece_load(const std::string& model_file);

}  // namespace moelab
