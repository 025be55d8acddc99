// A tiktoken encoding as llama.cpp's BPE tokenizer (gguf.hpp): the tokens in GPT-2's byte-level
// form (what llama.cpp's "gpt2" tokenizer model reads) and the merges, which a rank file does not
// hold, recovered from the ranks as convert_hf_to_gguf does for tiktoken vocabularies: a token's
// merge is the pair that byte-pair encoding of its own bytes, with only the lower ranks, ends in.
#include <fmt/format.h>

#include <array>
#include <unordered_map>

#include "convert/gguf.hpp"
#include "core/error.hpp"

namespace moelab {

namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + n.
std::array<std::string, 256> byte_level_table() {
  std::array<std::string, 256> t;
  int n = 0;
  for (int b = 0; b < 256; b++) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
    // UTF-8 of a code point below 0x800
    t[size_t(b)] = cp < 0x80 ? std::string(1, char(cp))
                             : std::string{char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
  }
  return t;
}

std::string byte_level(std::string_view bytes, const std::array<std::string, 256>& table) {
  std::string s;
  for (unsigned char c : bytes) {
    s += table[c];
  }
  return s;
}

// The parts byte-pair encoding leaves of `token` when only ranks below `max_rank` merge.
std::vector<std::string> bpe_parts(const std::string& token, int32_t max_rank,
                                   const std::unordered_map<std::string, int32_t>& ranks) {
  std::vector<std::string> parts;
  for (char c : token) {
    parts.emplace_back(1, c);
  }
  while (parts.size() > 1) {
    int32_t best = max_rank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); i++) {
      const auto it = ranks.find(parts[i] + parts[i + 1]);
      if (it != ranks.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == max_rank) {
      break;
    }
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + long(at) + 1);
  }
  return parts;
}

}  // namespace

GgufBpeVocab gguf_bpe_from_tiktoken(const std::string& rank_file, const TiktokenSpec& spec,
                                    int64_t vocab) {
  // the merges are recovered from every rank below a token's: the ranks must have no gap
  const std::vector<std::string> by_rank = tiktoken_read_ranks(rank_file);
  std::unordered_map<std::string, int32_t> ranks;
  for (size_t rank = 0; rank < by_rank.size(); rank++) {
    if (by_rank[rank].empty()) {
      fail(fmt::format("{}: ranks are not 0, 1, 2, ... in order", rank_file));
    }
    ranks.emplace(by_rank[rank], int32_t(rank));
  }
  int64_t need = int64_t(by_rank.size());
  for (const auto& [_, id] : spec.special) {
    need = std::max<int64_t>(need, int64_t(id) + 1);
  }
  if (vocab < need) {
    fail(fmt::format("export gguf: the model's vocab_size {} is below the tokenizer's {}", vocab,
                     need));
  }
  const auto table = byte_level_table();
  GgufBpeVocab v;
  v.tokens.resize(size_t(vocab));
  v.types.assign(size_t(vocab), 5);  // UNUSED: ids neither ranked nor special, as [PADn]
  for (int64_t id = 0; id < vocab; id++) {
    v.tokens[size_t(id)] = fmt::format("[PAD{}]", id);
  }
  for (size_t r = 0; r < by_rank.size(); r++) {
    v.tokens[r] = byte_level(by_rank[r], table);
    v.types[r] = 1;  // NORMAL
    if (by_rank[r].size() < 2) {
      continue;
    }
    const std::vector<std::string> parts = bpe_parts(by_rank[r], int32_t(r), ranks);
    if (parts.size() != 2) {
      fail(fmt::format("{}: rank {} is no merge of two lower-ranked tokens", rank_file, r));
    }
    v.merges.push_back(byte_level(parts[0], table) + " " + byte_level(parts[1], table));
  }
  for (const auto& [text, id] : spec.special) {
    v.tokens[size_t(id)] = text;
    v.types[size_t(id)] = 3;  // CONTROL
  }
  return v;
}

}  // namespace moelab
