#include "data/entities.hpp"

#include <cctype>

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>

#include "core/error.hpp"
#include "data/corpus.hpp"

namespace moelab {

namespace {

// What is wrong with the bytes of a line, or "" if nothing: names must be valid UTF-8 without
// control characters (a tab only as the type separator) so that every tokenizer takes them and
// every message quoting them stays one line.
std::string line_fault(std::string_view line) {
  for (size_t i = 0; i < line.size();) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if (c == 0) return fmt::format("a NUL byte at byte {}", i + 1);
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return fmt::format("control character 0x{:02x} at byte {}", c, i + 1);
    const size_t n = utf8_length_at(line, i);
    if (n == 0) return fmt::format("not valid UTF-8 at byte {}", i + 1);
    i += n;
  }
  return "";
}

std::string_view trim_spaces(std::string_view s) {
  const size_t b = s.find_first_not_of(' ');
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(' ') - b + 1);
}

// A name for a message: at most 40 code points (the line is valid UTF-8 by then).
std::string excerpt(std::string_view s) {
  size_t i = 0;
  for (int k = 0; k < 40 && i < s.size(); k++) i += std::max<size_t>(1, utf8_length_at(s, i));
  return fmt::format("'{}'{}", s.substr(0, i), i < s.size() ? "..." : "");
}

}  // namespace

std::vector<Entity> entities_load(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path + ": is a folder, not an entity list");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::vector<Entity> out;
  std::set<std::string> seen;
  std::string line;
  for (int64_t n = 1; std::getline(f, line); n++) {
    auto refuse = [&](std::string_view what) { fail(fmt::format("{}:{}: {}", path, n, what)); };
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > kEntityMaxBytes)
      refuse(fmt::format("a line of {} bytes; an entity name has at most {}", line.size(),
                         kEntityMaxBytes));
    if (const std::string fault = line_fault(line); !fault.empty()) refuse(fault);
    const size_t tab = line.find('\t');
    std::string name(line.substr(0, tab));
    for (char& c : name)
      if (c == '_') c = ' ';
    name = std::string(trim_spaces(name));
    Entity e;
    if (tab != std::string::npos) {
      const std::string_view type = trim_spaces(std::string_view(line).substr(tab + 1));
      if (type != "PER" && type != "LOC" && type != "ORG" && type != "MISC")
        refuse(fmt::format("type {} of {} is not PER, LOC, ORG or MISC (one tab, then the type)",
                           excerpt(type), excerpt(name)));
      if (name.empty()) refuse(fmt::format("type {} without a name", type));
      e.type = std::string(type);
    }
    if (name.empty()) continue;  // a blank line
    e.name = std::move(name);
    if (seen.insert(e.name).second) out.push_back(std::move(e));
  }
  if (f.bad()) fail(path + ": read error");
  if (out.empty()) fail(path + ": no entities");
  return out;
}

namespace {

std::string title_case(const std::string& s) {
  std::string t = s;
  bool start = true;
  for (char& c : t) {
    if (start && c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
    start = c == ' ' || c == '-' || c == '(' || c == '"';
  }
  return t;
}

}  // namespace

std::vector<bool> tokens_continuing_word(const Tokenizer& tok) {
  // Decode each token after a one-letter word and look at the character that follows it: this
  // works whether the tokenizer marks word starts (SentencePiece) or leading spaces (BPE).
  const std::vector<int32_t> a = tok.encode("a");
  const size_t base = tok.decode(a).size();
  std::vector<bool> cont(size_t(tok.vocab_size()), false);
  std::vector<int32_t> ids(a);
  ids.push_back(0);
  for (int64_t id = 0; id < tok.vocab_size(); id++) {
    ids.back() = int32_t(id);
    std::string s;
    try {
      s = tok.decode(ids);
    } catch (const std::exception&) {  // an id the vocabulary leaves unused
      continue;
    }
    // ASCII letters and digits only: a non-ASCII byte may be punctuation (a curly quote).
    cont[size_t(id)] = s.size() > base && std::isalnum(static_cast<unsigned char>(s[base]));
  }
  return cont;
}

std::vector<std::vector<int32_t>> entity_variants(const Tokenizer& tok, const std::string& name) {
  std::set<std::vector<int32_t>> seen;
  std::vector<std::vector<int32_t>> out;
  for (const std::string& form : {name, title_case(name)})
    for (const std::string& text : {form, " " + form}) {
      std::vector<int32_t> ids = tok.encode(text);
      if (!ids.empty() && seen.insert(ids).second) out.push_back(std::move(ids));
    }
  return out;
}

// ----------------------------------------------------------------------------
// Aho-Corasick over token ids

void TokenMatcher::add(std::span<const int32_t> pattern, int32_t value) {
  check(!built_, "TokenMatcher::add after build");
  check(!pattern.empty() && value >= 0, "TokenMatcher: empty pattern or negative value");
  int32_t s = 0;
  for (int32_t t : pattern) {
    auto it = nodes_[size_t(s)].next.find(t);
    if (it == nodes_[size_t(s)].next.end()) {
      nodes_.push_back(Node{});
      nodes_.back().depth = nodes_[size_t(s)].depth + 1;
      const int32_t n = int32_t(nodes_.size() - 1);
      nodes_[size_t(s)].next.emplace(t, n);
      s = n;
    } else {
      s = it->second;
    }
  }
  // Two entities with one tokenisation: the first keeps it (their counts are inseparable).
  if (nodes_[size_t(s)].out < 0) nodes_[size_t(s)].out = value;
}

void TokenMatcher::build() {
  std::deque<int32_t> queue;
  for (auto& [t, n] : nodes_[0].next) {
    nodes_[size_t(n)].fail = 0;
    queue.push_back(n);
  }
  while (!queue.empty()) {
    const int32_t s = queue.front();
    queue.pop_front();
    const Node& node = nodes_[size_t(s)];
    const int32_t f = node.fail;
    nodes_[size_t(s)].out_link = nodes_[size_t(f)].out >= 0 ? f : nodes_[size_t(f)].out_link;
    for (auto& [t, n] : node.next) {
      int32_t g = f;
      while (g != 0 && !nodes_[size_t(g)].next.contains(t)) g = nodes_[size_t(g)].fail;
      auto it = nodes_[size_t(g)].next.find(t);
      nodes_[size_t(n)].fail =
          (it != nodes_[size_t(g)].next.end() && it->second != n) ? it->second : 0;
      queue.push_back(n);
    }
  }
  built_ = true;
}

void TokenMatcher::scan(std::span<const int32_t> tokens,
                        const std::function<void(int64_t, int32_t)>& on_match) const {
  check(built_, "TokenMatcher::scan before build");
  int32_t s = 0;
  for (size_t i = 0; i < tokens.size(); i++) {
    const int32_t t = tokens[i];
    while (s != 0 && !nodes_[size_t(s)].next.contains(t)) s = nodes_[size_t(s)].fail;
    auto it = nodes_[size_t(s)].next.find(t);
    s = it == nodes_[size_t(s)].next.end() ? 0 : it->second;
    for (int32_t o = nodes_[size_t(s)].out >= 0 ? s : nodes_[size_t(s)].out_link; o >= 0;
         o = nodes_[size_t(o)].out_link)
      on_match(int64_t(i + 1), nodes_[size_t(o)].out);
  }
}

}  // namespace moelab
