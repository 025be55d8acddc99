#pragma once
// Tokenizers behind one interface: tiktoken-format byte-pair encodings (r50k/GPT-2, p50k,
// cl100k, o200k and gpt-oss's o200k_harmony), with pre-tokenisation by PCRE2, and
// SentencePiece models. Every tokenizer has a fingerprint (a hash of its vocabulary) that is
// stored with everything encoded by it.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace moelab {

// A tokenizer's special tokens: ids that stand for no text of their own and are written by their
// name (tiktoken's "<|endoftext|>", SentencePiece's control and unknown pieces "<s>", "</s>",
// "<unk>"). Built once, when the tokenizer loads.
struct SpecialTokens {
  std::vector<std::pair<std::string, int32_t>> list;  // (name, id), ids ascending
  std::unordered_map<std::string, int32_t> by_name;
  std::vector<std::string> name_of;  // [vocab] the name of a special id, empty for the others
  std::vector<size_t> lengths;       // the names' distinct lengths, longest first
  bool is_special(int32_t id) const {
    return id >= 0 && size_t(id) < name_of.size() && !name_of[size_t(id)].empty();
  }
};
SpecialTokens tokenizer_make_specials(std::vector<std::pair<std::string, int32_t>> list,
                                      int64_t vocab);

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
  // By default the end-of-text token alone (where it has a name): a test's or a benchmark's
  // tokenizer.
  virtual const SpecialTokens& specials() const;

 private:
  mutable std::once_flag default_once_;
  mutable SpecialTokens default_specials_;
};

// Text as a client means it: every special token's name in it (the longest where names overlap)
// is that id, the text between them is encoded as it stands. How the server and `moelab generate`
// read a prompt; tiktoken's encode() already does so, SentencePiece's does not.
std::vector<int32_t> tokenizer_encode_text(const Tokenizer& tok, std::string_view text);
// The inverse: each special id written as its name, the ids between two of them decoded
// together as the text they encode (a SentencePiece run drops its first piece's leading space
// as a text's first piece does), so that tokenizer_encode_text(tokenizer_decode_text(ids)) ==
// ids for any ids tokenizer_encode_text gave, specials included.
std::string tokenizer_decode_text(const Tokenizer& tok, std::span<const int32_t> ids);

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

// The byte strings of a .tiktoken rank file indexed by rank (a rank the file skips: ""); fails
// with one line naming the file and line of a malformed line.
std::vector<std::string> tiktoken_read_ranks(const std::string& rank_file);

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
