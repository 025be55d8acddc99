// SentencePiece (Debian libsentencepiece): training BPE or unigram models on a text sample and
// encoding with them. The end-of-text token is the model's </s> (eos) id.
#include <fmt/format.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "core/error.hpp"
#include "data/tokenizer.hpp"

namespace moelab {

namespace {

class SentencePiece final : public Tokenizer {
 public:
  explicit SentencePiece(const std::string& path) : path_(path) {
    const auto st = sp_.Load(path);
    if (!st.ok()) fail(fmt::format("{}: not a SentencePiece model ({})", path, st.ToString()));
    if (sp_.eos_id() < 0) fail(path + ": the SentencePiece model has no </s> (eos) piece");
    fingerprint_ = fnv1a("sentencepiece");
    for (int i = 0; i < sp_.GetPieceSize(); i++)
      fingerprint_ = fnv1a(sp_.IdToPiece(i), fnv1a(std::to_string(i), fingerprint_));
    // the pieces that decode() writes as nothing (control) or as " ⁇ " (unknown)
    std::vector<std::pair<std::string, int32_t>> special;
    for (int i = 0; i < sp_.GetPieceSize(); i++)
      if (sp_.IsControl(i) || sp_.IsUnknown(i)) special.emplace_back(sp_.IdToPiece(i), i);
    specials_ = tokenizer_make_specials(std::move(special), sp_.GetPieceSize());
  }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto st = sp_.Encode(text, &ids);
    if (!st.ok()) fail(fmt::format("{}: encode failed ({})", path_, st.ToString()));
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids)
      if (id < 0 || id >= sp_.GetPieceSize())
        fail(fmt::format("{}: token id {} out of range", path_, id));
    const auto st = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    if (!st.ok()) fail(fmt::format("{}: decode failed ({})", path_, st.ToString()));
    return out;
  }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  int32_t eot_id() const override { return sp_.eos_id(); }
  std::string eot_text() const override { return sp_.IdToPiece(sp_.eos_id()); }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::string name() const override { return "sentencepiece:" + path_; }
  const SpecialTokens& specials() const override { return specials_; }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  uint64_t fingerprint_ = 0;
  SpecialTokens specials_;
};

}  // namespace

void sentencepiece_train(const std::string& input, const std::string& prefix,
                         const SentencePieceTrainOptions& o) {
  if (o.model_type != "bpe" && o.model_type != "unigram")
    fail(fmt::format("tokenizer model type '{}': must be bpe or unigram", o.model_type));
  // Byte fallback keeps every input byte encodable; digits split for arithmetic-friendly ids.
  const std::string args = fmt::format(
      "--input={} --model_prefix={} --vocab_size={} --model_type={} --input_sentence_size={} "
      "--shuffle_input_sentence=true --num_threads={} --byte_fallback=true --split_digits=true "
      "--character_coverage=1.0 --max_sentence_length=16384 --minloglevel=2 "
      "--hard_vocab_limit=false",
      input, prefix, o.vocab_size, o.model_type, o.max_sentences, o.threads);
  const auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) fail(fmt::format("{}: SentencePiece training failed ({})", input, st.ToString()));
}

std::unique_ptr<Tokenizer> sentencepiece_load(const std::string& model_file) {
  return std::make_unique<SentencePiece>(model_file);
}

}  // namespace moelab
