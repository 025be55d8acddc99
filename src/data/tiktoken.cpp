// tiktoken-format byte-pair encoding: the same pre-tokenisation regexes (run by PCRE2, which
// handles the look-ahead and possessive forms) and the same merge loop as tiktoken, so ids are
// identical; checked against gpt-tokenizer's test vectors.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <unordered_map>

#include "core/error.hpp"
#include "data/tokenizer.hpp"

namespace moelab {

uint64_t fnv1a(std::string_view bytes, uint64_t h) {
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// ----------------------------------------------------------------------------
// the standard encodings

namespace {

const char* kR50kPattern =
    R"('(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* kCl100kPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";
const char* kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace

namespace {

TiktokenSpec tiktoken_spec_table(const std::string& name) {
  if (name == "r50k_base" || name == "gpt2")
    return {"r50k_base", kR50kPattern, {{"<|endoftext|>", 50256}}};
  if (name == "p50k_base") return {"p50k_base", kR50kPattern, {{"<|endoftext|>", 50256}}};
  if (name == "p50k_edit")
    return {"p50k_edit",
            kR50kPattern,
            {{"<|endoftext|>", 50256},
             {"<|fim_prefix|>", 50281},
             {"<|fim_middle|>", 50282},
             {"<|fim_suffix|>", 50283}}};
  if (name == "cl100k_base")
    return {"cl100k_base",
            kCl100kPattern,
            {{"<|endoftext|>", 100257},
             {"<|fim_prefix|>", 100258},
             {"<|fim_middle|>", 100259},
             {"<|fim_suffix|>", 100260},
             {"<|endofprompt|>", 100276}}};
  if (name == "o200k_base")
    return {"o200k_base", kO200kPattern, {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}}};
  if (name == "o200k_harmony") {  // methods.md §3.10: o200k_base ranks + the harmony specials
    TiktokenSpec s{"o200k_harmony",
                   kO200kPattern,
                   {{"<|startoftext|>", 199998},
                    {"<|endoftext|>", 199999},
                    {"<|return|>", 200002},
                    {"<|constrain|>", 200003},
                    {"<|channel|>", 200005},
                    {"<|start|>", 200006},
                    {"<|end|>", 200007},
                    {"<|message|>", 200008},
                    {"<|call|>", 200012}}};
    std::vector<bool> used(201088, false);
    for (auto& [_, id] : s.special) used[size_t(id)] = true;
    for (int32_t id = 199998; id < 201088; id++)
      if (!used[size_t(id)]) s.special.emplace(fmt::format("<|reserved_{}|>", id), id);
    return s;
  }
  fail(
      fmt::format("unknown tiktoken encoding '{}' (r50k_base, p50k_base, p50k_edit, cl100k_base, "
                  "o200k_base, o200k_harmony)",
                  name));
}

}  // namespace

TiktokenSpec tiktoken_spec(const std::string& name) {
  TiktokenSpec s = tiktoken_spec_table(name);
  s.ranks =
      s.name == "o200k_harmony" ? "o200k_base" : (s.name == "p50k_edit" ? "p50k_base" : s.name);
  return s;
}

// ----------------------------------------------------------------------------
// the tokenizer

namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = base64_value(c);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  return true;
}

}  // namespace

std::vector<std::string> tiktoken_read_ranks(const std::string& rank_file) {
  std::ifstream f(rank_file);
  if (!f) {
    fail(rank_file + ": cannot open");
  }
  std::vector<std::string> by_rank;
  std::string line, bytes;
  int64_t line_no = 0;
  while (std::getline(f, line)) {
    line_no++;
    if (line.empty()) {
      continue;
    }
    const size_t sp = line.find(' ');
    int64_t rank = -1;
    if (sp == std::string::npos || !base64_decode(std::string_view(line).substr(0, sp), bytes) ||
        std::sscanf(line.c_str() + sp + 1, "%ld", &rank) != 1 || rank < 0 || rank >= INT32_MAX) {
      fail(fmt::format("{}:{}: not a tiktoken rank line", rank_file, line_no));
    }
    if (size_t(rank) >= by_rank.size()) {
      by_rank.resize(size_t(rank) + 1);
    }
    by_rank[size_t(rank)] = bytes;
  }
  return by_rank;
}

namespace {

class TiktokenBpe final : public Tokenizer {
 public:
  TiktokenBpe(const std::string& rank_file, TiktokenSpec spec)
      : spec_(std::move(spec)), decoder_(tiktoken_read_ranks(rank_file)) {
    for (size_t rank = 0; rank < decoder_.size(); rank++) {
      if (!decoder_[rank].empty()) {
        encoder_.emplace(decoder_[rank], int32_t(rank));
      }
    }
    if (encoder_.empty()) fail(rank_file + ": no ranks");
    vocab_ = int64_t(decoder_.size());
    for (auto& [text, id] : spec_.special) vocab_ = std::max<int64_t>(vocab_, int64_t(id) + 1);
    special_text_.resize(size_t(vocab_));
    for (auto& [text, id] : spec_.special) special_text_[size_t(id)] = text;
    auto eot = spec_.special.find(spec_.eot);
    if (eot == spec_.special.end()) fail(spec_.name + ": no end-of-text special token");
    eot_ = eot->second;
    // fingerprint: pattern, every (rank, bytes), every special
    fingerprint_ = fnv1a(spec_.pattern);
    for (size_t r = 0; r < decoder_.size(); r++)
      fingerprint_ = fnv1a(decoder_[r], fnv1a(std::to_string(r), fingerprint_));
    for (auto& [text, id] : spec_.special)
      fingerprint_ = fnv1a(text, fnv1a(std::to_string(id), fingerprint_));
    specials_ = tokenizer_make_specials({spec_.special.begin(), spec_.special.end()}, vocab_);

    int err = 0;
    PCRE2_SIZE off = 0;
    re_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(spec_.pattern.c_str()), PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!re_)
      fail(
          fmt::format("{}: pattern does not compile (PCRE2 error {} at {})", spec_.name, err, off));
    pcre2_jit_compile(re_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  }
  ~TiktokenBpe() override { pcre2_code_free(re_); }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    size_t pos = 0;
    while (pos < text.size()) {
      // Specials all look like <|...|>: find the next one that is in the table.
      size_t at = text.find("<|", pos), end = 0;
      int32_t special = -1;
      while (at != std::string_view::npos) {
        end = text.find("|>", at + 2);
        if (end == std::string_view::npos) {
          at = std::string_view::npos;
          break;
        }
        auto it = spec_.special.find(std::string(text.substr(at, end + 2 - at)));
        if (it != spec_.special.end()) {
          special = it->second;
          break;
        }
        at = text.find("<|", at + 1);
      }
      const size_t stop = at == std::string_view::npos ? text.size() : at;
      encode_ordinary(text.substr(pos, stop - pos), out);
      if (special < 0) break;
      out.push_back(special);
      pos = end + 2;
    }
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_) fail(fmt::format("{}: token id {} out of range", spec_.name, id));
      if (size_t(id) < decoder_.size() && !decoder_[size_t(id)].empty())
        s += decoder_[size_t(id)];
      else
        s += special_text_[size_t(id)];
    }
    return s;
  }

  int64_t vocab_size() const override { return vocab_; }
  int32_t eot_id() const override { return eot_; }
  std::string eot_text() const override { return spec_.eot; }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::string name() const override { return spec_.name; }
  const SpecialTokens& specials() const override { return specials_; }

 private:
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re_, nullptr);
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = pcre2_match(re_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                                 0, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {  // only bytes that are not valid UTF-8 are left
        bpe(text.substr(pos), out);
        break;
      }
      if (rc < 0) {
        pcre2_match_data_free(md);
        fail(fmt::format("{}: PCRE2 match error {}", spec_.name, rc));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t s = ov[0], e = ov[1];
      if (s > pos) bpe(text.substr(pos, s - pos), out);  // invalid UTF-8 between matches
      if (e > s) {
        bpe(text.substr(s, e - s), out);
        pos = e;
      } else {  // an empty match would not advance
        bpe(text.substr(s, 1), out);
        pos = s + 1;
      }
    }
    pcre2_match_data_free(md);
  }

  int32_t rank_of(std::string_view bytes) const {
    auto it = encoder_.find(std::string(bytes));
    return it == encoder_.end() ? INT32_MAX : it->second;
  }

  // tiktoken's merge loop: repeatedly merge the adjacent pair whose bytes have the lowest rank.
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    if (const int32_t r = rank_of(piece); r != INT32_MAX) {
      out.push_back(r);
      return;
    }
    std::vector<std::pair<size_t, int32_t>> parts;  // (start, rank of merging with the next)
    parts.reserve(piece.size() + 1);
    for (size_t i = 0; i + 1 < piece.size(); i++)
      parts.emplace_back(i, rank_of(piece.substr(i, 2)));
    parts.emplace_back(piece.size() - 1, INT32_MAX);
    parts.emplace_back(piece.size(), INT32_MAX);
    auto merged_rank = [&](size_t i) {
      return i + 3 < parts.size()
                 ? rank_of(piece.substr(parts[i].first, parts[i + 3].first - parts[i].first))
                 : INT32_MAX;
    };
    while (true) {
      int32_t best = INT32_MAX;
      size_t bi = 0;
      for (size_t i = 0; i + 1 < parts.size(); i++)
        if (parts[i].second < best) best = parts[i].second, bi = i;
      if (best == INT32_MAX) break;
      if (bi > 0) parts[bi - 1].second = merged_rank(bi - 1);
      parts[bi].second = merged_rank(bi);
      parts.erase(parts.begin() + long(bi) + 1);
    }
    for (size_t i = 0; i + 1 < parts.size(); i++) {
      const int32_t r = rank_of(piece.substr(parts[i].first, parts[i + 1].first - parts[i].first));
      check(r != INT32_MAX, "tiktoken: a byte has no rank (not a byte-level vocabulary)");
      out.push_back(r);
    }
  }

  TiktokenSpec spec_;
  std::unordered_map<std::string, int32_t> encoder_;
  std::vector<std::string> decoder_, special_text_;
  int64_t vocab_ = 0;
  int32_t eot_ = 0;
  uint64_t fingerprint_ = 0;
  SpecialTokens specials_;
  pcre2_code* re_ = nullptr;
};

}  // namespace

std::unique_ptr<Tokenizer> tiktoken_load(const std::string& rank_file, const TiktokenSpec& spec) {
  return std::make_unique<TiktokenBpe>(rank_file, spec);
}

}  // namespace moelab
