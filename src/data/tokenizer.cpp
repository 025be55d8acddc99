// What every tokenizer shares: its special tokens, and text with them written by name (the
// completions server's prompts, /detokenize, `moelab generate --prompt`).
#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "data/tokenizer.hpp"

namespace moelab {

SpecialTokens tokenizer_make_specials(std::vector<std::pair<std::string, int32_t>> list,
                                      int64_t vocab) {
  SpecialTokens s;
  std::sort(list.begin(), list.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  s.name_of.resize(size_t(vocab));
  for (const auto& [name, id] : list) {
    check(id >= 0 && id < vocab && !name.empty(),
          fmt::format("tokenizer: special token '{}' (id {}) outside the vocabulary", name, id));
    s.by_name.emplace(name, id);
    s.name_of[size_t(id)] = name;
    if (std::find(s.lengths.begin(), s.lengths.end(), name.size()) == s.lengths.end()) {
      s.lengths.push_back(name.size());
    }
  }
  std::sort(s.lengths.rbegin(), s.lengths.rend());
  s.list = std::move(list);
  return s;
}

const SpecialTokens& Tokenizer::specials() const {
  std::call_once(default_once_, [&] {
    const std::string name = eot_text();
    const int64_t vocab = std::max<int64_t>(vocab_size(), int64_t(eot_id()) + 1);
    default_specials_ = name.empty() || eot_id() < 0
                            ? tokenizer_make_specials({}, vocab)
                            : tokenizer_make_specials({{name, eot_id()}}, vocab);
  });
  return default_specials_;
}

std::vector<int32_t> tokenizer_encode_text(const Tokenizer& tok, std::string_view text) {
  const SpecialTokens& sp = tok.specials();
  // the bytes a special's name may begin with ('<' for every tokenizer of ours)
  bool first[256] = {};
  for (const auto& [name, id] : sp.list) {
    first[static_cast<unsigned char>(name[0])] = true;
  }
  std::vector<int32_t> ids;
  auto plain = [&](std::string_view part) {
    if (part.empty()) {
      return;
    }
    const auto p = tok.encode(part);
    ids.insert(ids.end(), p.begin(), p.end());
  };
  size_t from = 0;  // the start of the text not yet encoded
  for (size_t at = 0; at < text.size(); at++) {
    if (!first[static_cast<unsigned char>(text[at])]) {
      continue;
    }
    for (const size_t len : sp.lengths) {  // the longest name that matches here
      if (len > text.size() - at) {
        continue;
      }
      const auto it = sp.by_name.find(std::string(text.substr(at, len)));
      if (it == sp.by_name.end()) {
        continue;
      }
      plain(text.substr(from, at - from));
      ids.push_back(it->second);
      from = at + len;
      at = from - 1;
      break;
    }
  }
  plain(text.substr(from));
  return ids;
}

std::string tokenizer_decode_text(const Tokenizer& tok, std::span<const int32_t> ids) {
  const SpecialTokens& sp = tok.specials();
  std::string out;
  size_t from = 0;  // the start of the run of ordinary ids
  for (size_t i = 0; i <= ids.size(); i++) {
    if (i < ids.size() && !sp.is_special(ids[i])) {
      continue;
    }
    if (i > from) {
      out += tok.decode(ids.subspan(from, i - from));
    }
    if (i < ids.size()) {
      out += sp.name_of[size_t(ids[i])];
    }
    from = i + 1;
  }
  return out;
}

}  // namespace moelab
