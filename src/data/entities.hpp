#pragma once
// Entities: loading lists (Wikipedia all-titles dumps, plain lists, name<TAB>TYPE files), the
// token sequences an entity can take in running text, and a multi-pattern matcher over token
// ids (Aho-Corasick) that finds every occurrence in one pass over a token stream.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/tokenizer.hpp"

namespace moelab {

struct Entity {
  std::string name;
  std::string type = "MISC";  // PER, LOC, ORG or MISC
};

// One entity per line: "name<TAB>TYPE" or a bare name; underscores (the all-titles dump's
// spaces) become spaces; blank lines and duplicates are dropped. An empty list is an error, and
// so is a line that is not valid UTF-8, holds a NUL or another control character (a tab only as
// the separator), is longer than kEntityMaxBytes, or has a type other than PER/LOC/ORG/MISC or
// no name before its tab: one line "PATH:LINE: ..." names it.
std::vector<Entity> entities_load(const std::string& path);

// Wikipedia titles have at most 255 bytes; a longer "name" is a damaged file, and tokenising a
// huge one would take quadratic time in byte-pair merges.
inline constexpr size_t kEntityMaxBytes = 1024;

// The token sequences of an entity in running text: the name as written and in title case
// (lists such as popular Wikipedia titles are lower-cased), each with and without a leading
// space (BPE tokenisers encode " Name" and "Name" differently), without duplicates.
std::vector<std::vector<int32_t>> entity_variants(const Tokenizer& tok, const std::string& name);

// Per token id: whether the token, right after a word, continues that word (its text starts
// with a letter or digit, with no space between): "ites" after "Ammon" does, " the" does not.
// A match followed by such a token is part of a longer word ("Ammonites"), not the entity.
std::vector<bool> tokens_continuing_word(const Tokenizer& tok);

class TokenMatcher {
 public:
  void add(std::span<const int32_t> pattern, int32_t value);
  void build();  // after the last add
  // Calls on_match(end, value) for every occurrence, end = the position after its last token.
  void scan(std::span<const int32_t> tokens,
            const std::function<void(int64_t end, int32_t value)>& on_match) const;
  int64_t states() const { return int64_t(nodes_.size()); }

 private:
  struct Node {
    std::unordered_map<int32_t, int32_t> next;
    int32_t fail = 0;
    int32_t out = -1;       // value of the pattern ending here, -1 if none
    int32_t out_link = -1;  // nearest state on the fail chain with an output
    int32_t depth = 0;
  };
  std::vector<Node> nodes_{Node{}};
  bool built_ = false;
};

}  // namespace moelab
