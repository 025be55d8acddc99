#pragma once
// A tokenizer for tests: id v is one letter (a-z, A-Z, then digits: decoded only), "<eot>" the
// end-of-text id; `n` ids, fewer than a model's when testing a padded vocabulary.
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.hpp"

namespace moelab {

class LetterTokenizer final : public Tokenizer {
 public:
  LetterTokenizer(int64_t n, int32_t eot) : n_(n), eot_(eot) {}
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < text.size(); i++) {
      const char ch = text[i];
      if (text.substr(i, 5) == "<eot>") {
        ids.push_back(eot_), i += 4;
      } else if (ch >= 'a' && ch <= 'z') {
        ids.push_back(ch - 'a');
      } else if (ch >= 'A' && ch <= 'Z') {
        ids.push_back(26 + ch - 'A');
      }  // anything else is skipped
    }
    return ids;
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    for (int32_t v : ids) s += char(v < 26 ? 'a' + v : v < 52 ? 'A' + v - 26 : '0' + v % 10);
    return s;
  }
  int64_t vocab_size() const override { return n_; }
  int32_t eot_id() const override { return eot_; }
  std::string eot_text() const override { return "<eot>"; }
  uint64_t fingerprint() const override { return 1; }
  std::string name() const override { return "letters"; }

 private:
  int64_t n_;
  int32_t eot_;
};

}  // namespace moelab
