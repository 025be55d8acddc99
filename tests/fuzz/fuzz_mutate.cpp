#include "fuzz_mutate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/rng.hpp"

namespace moelab::fuzz {

namespace {

struct Span {
  size_t begin, end;
};

struct Rng {
  uint64_t key, n = 0;
  uint64_t next() { return rng_u64(key, 0, n++); }
  size_t below(size_t k) { return k ? size_t(next() % k) : 0; }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }
};

// Values that break readers: signs, zeros, the edges of 32- and 64-bit integers, numbers that
// do not fit a double, wrong types.
const std::vector<std::string> kNumbers = {"-1",
                                           "0",
                                           "-0",
                                           "1",
                                           "2147483648",
                                           "4294967296",
                                           "9223372036854775807",
                                           "-9223372036854775808",
                                           "18446744073709551616",
                                           "99999999999999999999999",
                                           "1e309",
                                           "-1e309",
                                           "1e-400",
                                           "0.5",
                                           "nan",
                                           "inf",
                                           "\"12\"",
                                           "true",
                                           "null",
                                           "[]",
                                           "{}",
                                           "1_0",
                                           "0x10",
                                           ""};
const std::vector<std::string> kStrings = {"\"\"",
                                           "\"a\\nb\"",
                                           "\"\\u0000\"",
                                           "\"${MOELAB_CACHE}/x\"",
                                           "\"/\"",
                                           "\"\\ud800\"",
                                           "\"\xff\xfe\"",
                                           "\"A\\r\\nB\"",
                                           "12",
                                           "null",
                                           "[]",
                                           "{}",
                                           "\"" + std::string(300, 'x') + "\"",
                                           "\"\\t\""};
const std::vector<uint64_t> kInts = {0,
                                     1,
                                     2,
                                     3,
                                     0x7f,
                                     0xff,
                                     0xffff,
                                     0x7fffffff,
                                     0x80000000,
                                     0xffffffff,
                                     uint64_t(1) << 32,
                                     uint64_t(1) << 62,
                                     uint64_t(1) << 63,
                                     ~uint64_t(0),
                                     ~uint64_t(0) - 63};
// Keys that readers may echo in a message: line breaks, a NUL, nothing, an unknown name.
const std::vector<std::string> kKeys = {"\"a\\nb\"", "\"\\r\"",     "\"\\u0000\"",
                                        "\"\"",      "unknown_key", "\"x\\ty\""};
const std::string kStructural = "{}[],:=\"\n\t\\.-0e#'";

// ----------------------------------------------------------------------------
// finding the pieces of a text

bool word_char(uint8_t c) {
  return std::isalnum(c) || c == '_' || c == '.';
}

std::vector<Span> numbers(const Bytes& b) {
  std::vector<Span> out;
  for (size_t i = 0; i < b.size(); i++) {
    const bool sign = (b[i] == '-' || b[i] == '+') && i + 1 < b.size() && std::isdigit(b[i + 1]);
    if (!(std::isdigit(b[i]) || sign) || (i > 0 && word_char(b[i - 1]))) continue;
    size_t j = i + 1;
    while (j < b.size() &&
           (std::isdigit(b[j]) || b[j] == '.' || b[j] == '_' || b[j] == 'e' || b[j] == 'E' ||
            ((b[j] == '-' || b[j] == '+') && (b[j - 1] | 32) == 'e')))
      j++;
    out.push_back({i, j});
    i = j;
  }
  return out;
}

size_t string_end(const Bytes& b, size_t i) {  // b[i] == '"'; the position after the closing one
  for (size_t j = i + 1; j < b.size(); j++) {
    if (b[j] == '\\')
      j++;
    else if (b[j] == '"' || b[j] == '\n')
      return j + 1;
  }
  return b.size();
}

std::vector<Span> strings(const Bytes& b) {
  std::vector<Span> out;
  for (size_t i = 0; i < b.size(); i++)
    if (b[i] == '"') {
      const size_t e = string_end(b, i);
      out.push_back({i, e});
      i = e - 1;
    }
  return out;
}

// The end of the JSON value that starts at or after i.
size_t value_end(const Bytes& b, size_t i) {
  while (i < b.size() && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n')) i++;
  int depth = 0;
  for (; i < b.size(); i++) {
    const uint8_t c = b[i];
    if (c == '"') {
      i = string_end(b, i) - 1;
      if (depth == 0) return i + 1;
    } else if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return i;
      if (--depth == 0) return i + 1;
    } else if (depth == 0 && (c == ',' || c == '\n')) {
      return i;
    }
  }
  return b.size();
}

// JSON members ("key": value) and TOML assignments (key = value): [key, end of value).
std::vector<Span> members(const Bytes& b) {
  std::vector<Span> out;
  for (const Span& s : strings(b)) {
    size_t j = s.end;
    while (j < b.size() && b[j] == ' ') j++;
    if (j < b.size() && b[j] == ':') out.push_back({s.begin, value_end(b, j + 1)});
  }
  for (size_t i = 0; i < b.size(); i++) {
    const bool line_start = i == 0 || b[i - 1] == '\n';
    if (!line_start || !word_char(b[i])) continue;
    size_t j = i;
    while (j < b.size() && word_char(b[j])) j++;
    while (j < b.size() && b[j] == ' ') j++;
    if (j < b.size() && b[j] == '=') out.push_back({i, value_end(b, j + 1)});
  }
  return out;
}

// The key of a member: a JSON string or a bare TOML key.
Span key_of(const Bytes& b, Span m) {
  if (b[m.begin] == '"') return {m.begin, string_end(b, m.begin)};
  size_t e = m.begin;
  while (e < m.end && word_char(b[e])) e++;
  return {m.begin, e};
}

std::vector<Span> lines(const Bytes& b) {
  std::vector<Span> out;
  for (size_t i = 0; i < b.size();) {
    size_t e = i;
    while (e < b.size() && b[e] != '\n') e++;
    out.push_back({i, std::min(e + 1, b.size())});
    i = e + 1;
  }
  return out;
}

// ----------------------------------------------------------------------------
// edits

Bytes replace(const Bytes& b, Span s, std::string_view with) {
  Bytes out(b.begin(), b.begin() + ptrdiff_t(s.begin));
  out.insert(out.end(), with.begin(), with.end());
  out.insert(out.end(), b.begin() + ptrdiff_t(s.end), b.end());
  return out;
}

Bytes erase(const Bytes& b, Span s) {
  return replace(b, s, "");
}

Bytes duplicate(const Bytes& b, Span s, std::string_view sep = "") {
  std::string piece(b.begin() + ptrdiff_t(s.begin), b.begin() + ptrdiff_t(s.end));
  return replace(b, {s.end, s.end}, std::string(sep) + piece);
}

// A member deleted with the comma that separated it from the next (or the previous) one.
Bytes delete_member(const Bytes& b, Span m) {
  size_t e = m.end;
  while (e < b.size() && b[e] == ' ') e++;
  if (e < b.size() && b[e] == ',') return erase(b, {m.begin, e + 1});
  size_t s = m.begin;
  while (s > 0 && (b[s - 1] == ' ' || b[s - 1] == '\n')) s--;
  if (s > 0 && b[s - 1] == ',') return erase(b, {s - 1, m.end});
  return erase(b, m);
}

Bytes put_int(Bytes b, size_t at, uint64_t v, size_t width) {
  if (at + width > b.size()) b.resize(at + width);
  std::memcpy(b.data() + at, &v, width);  // little-endian, as the formats are
  return b;
}

// Binary files with a JSON header (safetensors: u64 length, then the header): text edits go
// inside the header and the length follows them.
bool json_header(const Bytes& b, Span& h) {
  if (b.size() < 10 || b[8] != '{') return false;
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  if (n > b.size() - 8) return false;
  h = {8, 8 + size_t(n)};
  return true;
}

template <typename Edit>
Bytes in_header(const Bytes& b, Edit edit) {
  Span h;
  if (!json_header(b, h)) return edit(b);
  const Bytes head(b.begin() + 8, b.begin() + ptrdiff_t(h.end));
  const Bytes edited = edit(head);
  Bytes out = put_int({}, 0, edited.size(), 8);
  out.insert(out.end(), edited.begin(), edited.end());
  out.insert(out.end(), b.begin() + ptrdiff_t(h.end), b.end());
  return out;
}

// ----------------------------------------------------------------------------
// the systematic mutations of one seed

void systematic(std::vector<Mutation>& out, const Bytes& s, size_t k, bool text) {
  auto add = [&](std::string what, Bytes b) {
    out.push_back({fmt::format("seed {}: {}", k, what), std::move(b)});
  };
  add("as written", s);
  // Truncation: inside and at the end of each header field (binary), at line ends and before
  // structural characters (text), and one byte short.
  std::vector<size_t> cuts = {0, 1, s.size() / 2, s.size() - std::min<size_t>(s.size(), 1)};
  if (!text)
    for (size_t at = 2; at <= 72 && at < s.size(); at += (at < 16 ? 1 : 4)) cuts.push_back(at);
  const std::vector<Span> ls = lines(s);
  for (size_t i = 0; text && i < ls.size(); i += 1 + ls.size() / 16) cuts.push_back(ls[i].end - 1);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  for (size_t c : cuts)
    add(fmt::format("truncated to {} bytes", c), Bytes(s.begin(), s.begin() + ptrdiff_t(c)));

  auto edits = [&](const Bytes& b, std::vector<Mutation>& into, const std::string& where,
                   auto wrap) {
    const std::vector<Span> ns = numbers(b), ss = strings(b), ms = members(b), bl = lines(b);
    auto put = [&](std::string what, auto f) {
      into.push_back({fmt::format("seed {}: {}{}", k, where, what), wrap(f)});
    };
    for (size_t i = 0; i < ns.size(); i += 1 + ns.size() / 24)
      put(fmt::format("number {} -> {}", i, kNumbers[i % kNumbers.size()]),
          [&](const Bytes& x) { return replace(x, ns[i], kNumbers[i % kNumbers.size()]); });
    for (size_t i = 0; i < ss.size(); i += 1 + ss.size() / 16)
      put(fmt::format("string {} -> {}", i, kStrings[i % kStrings.size()].substr(0, 24)),
          [&](const Bytes& x) { return replace(x, ss[i], kStrings[i % kStrings.size()]); });
    for (size_t i = 0; i < ms.size(); i += 1 + ms.size() / 16) {
      put(fmt::format("key {} deleted", i),
          [&](const Bytes& x) { return delete_member(x, ms[i]); });
      put(fmt::format("key {} renamed {}", i, kKeys[i % kKeys.size()]),
          [&](const Bytes& x) { return replace(x, key_of(x, ms[i]), kKeys[i % kKeys.size()]); });
    }
    for (size_t i = 0; text && i < bl.size(); i += 1 + bl.size() / 16) {
      put(fmt::format("line {} deleted", i), [&](const Bytes& x) { return erase(x, bl[i]); });
      put(fmt::format("line {} doubled", i), [&](const Bytes& x) { return duplicate(x, bl[i]); });
    }
  };
  if (text) {
    edits(s, out, "", [&](auto f) { return f(s); });
  } else if (Span h; json_header(s, h)) {
    const Bytes head(s.begin() + 8, s.begin() + ptrdiff_t(h.end));
    edits(head, out, "header ", [&](auto f) { return in_header(s, f); });
  }
}

// ----------------------------------------------------------------------------
// one random mutation

Bytes random_text_edit(Rng& r, const Bytes& b, std::string& what) {
  const std::vector<Span> ns = numbers(b), ss = strings(b), ms = members(b), ls = lines(b);
  switch (r.below(9)) {
    case 0: {
      if (ns.empty()) break;
      const std::string& v = r.pick(kNumbers);
      what = "number -> " + v;
      return replace(b, r.pick(ns), v);
    }
    case 7: {
      if (ms.empty()) break;
      const std::string& k = r.pick(kKeys);
      what = "key renamed " + k;
      return replace(b, key_of(b, r.pick(ms)), k);
    }
    case 1:
      if (ss.empty()) break;
      what = "string replaced";
      return replace(b, r.pick(ss), r.pick(kStrings));
    case 2:
      if (ms.empty()) break;
      what = "key deleted";
      return delete_member(b, r.pick(ms));
    case 3:
      if (ms.empty()) break;
      what = "key duplicated";
      return duplicate(b, r.pick(ms), b[r.pick(ms).begin] == '"' ? ", " : "\n");
    case 4: {
      if (ms.empty()) break;
      const Span m = r.pick(ms);
      size_t eq = m.begin;
      while (eq < m.end && b[eq] != ':' && b[eq] != '=') eq++;
      what = "value replaced";
      const auto& v = r.below(2) ? kNumbers : kStrings;
      return replace(b, {std::min(eq + 1, m.end), m.end}, " " + r.pick(v));
    }
    case 5:
      if (ls.size() < 2) break;
      what = "lines swapped";
      {
        const size_t i = r.below(ls.size() - 1);
        Bytes out = erase(b, ls[i]);
        const size_t at = ls[i + 1].end - (ls[i].end - ls[i].begin);
        out.insert(out.begin() + ptrdiff_t(at), b.begin() + ptrdiff_t(ls[i].begin),
                   b.begin() + ptrdiff_t(ls[i].end));
        return out;
      }
    case 6:
      if (ls.empty()) break;
      what = "line duplicated";
      return duplicate(b, r.pick(ls));
    default:
      break;
  }
  what = "structural character inserted";
  const size_t at = r.below(b.size() + 1);
  return replace(b, {at, at}, std::string(1, kStructural[r.below(kStructural.size())]));
}

Bytes random_byte_edit(Rng& r, const std::vector<Bytes>& seeds, const Bytes& s, std::string& what) {
  Bytes b = s;
  const size_t n = b.size();
  switch (r.below(8)) {
    case 0: {
      const size_t flips = 1 + r.below(8);
      what = fmt::format("{} bits flipped", flips);
      for (size_t i = 0; i < flips && n; i++) b[r.below(n)] ^= uint8_t(1u << r.below(8));
      return b;
    }
    case 1: {
      static const uint8_t v[] = {0, 1, 0x7f, 0x80, 0xff, '{', '"', '\n', '\r', '\\'};
      what = "byte set";
      if (n) b[r.below(n)] = v[r.below(sizeof v)];
      return b;
    }
    case 2: {
      const size_t width = size_t(1) << (1 + r.below(3));  // 2, 4 or 8 bytes
      const size_t at =
          r.below(2) ? (r.below(std::min<size_t>(n, 72) / width + 1) * width) : r.below(n + 1);
      std::vector<uint64_t> vals = kInts;
      vals.insert(vals.end(), {uint64_t(n), uint64_t(n) - 8, uint64_t(n) + 1});
      const uint64_t v = r.pick(vals);
      what = fmt::format("{}-byte field at {} = {:#x}", width, at, v);
      return put_int(b, at, v, width);
    }
    case 3: {
      const size_t at = r.below(n + 1), k = 1 + r.below(16);
      what = fmt::format("{} random bytes inserted at {}", k, at);
      for (size_t i = 0; i < k; i++) b.insert(b.begin() + ptrdiff_t(at), uint8_t(r.next()));
      return b;
    }
    case 4: {
      const size_t at = r.below(n + 1), k = std::min(n - at, 1 + r.below(32));
      what = fmt::format("{} bytes deleted at {}", k, at);
      return erase(b, {at, at + k});
    }
    case 5: {
      const size_t at = r.below(n + 1), k = std::min(n - at, 1 + r.below(64));
      what = fmt::format("{} bytes at {} duplicated", k, at);
      return duplicate(b, {at, at + k});
    }
    case 6: {
      const Bytes& o = r.pick(seeds);
      const size_t a = r.below(n + 1), c = r.below(o.size() + 1);
      what = fmt::format("spliced: {} bytes + another seed from {}", a, c);
      Bytes out(b.begin(), b.begin() + ptrdiff_t(a));
      out.insert(out.end(), o.begin() + ptrdiff_t(c), o.end());
      return out;
    }
    default: {
      const size_t at = r.below(n + 1);
      what = fmt::format("truncated to {} bytes", at);
      b.resize(at);
      return b;
    }
  }
}

}  // namespace

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return h;
}

std::vector<Mutation> mutations(const std::vector<Bytes>& seeds, bool text, int64_t n_random,
                                uint64_t seed) {
  std::vector<Mutation> out;
  for (size_t k = 0; k < seeds.size(); k++) systematic(out, seeds[k], k, text);
  Rng r{seed};
  for (int64_t i = 0; i < n_random && !seeds.empty(); i++) {
    const size_t k = r.below(seeds.size());
    Bytes b = seeds[k];
    std::string name;
    // One to three stacked edits; text edits for text formats and JSON headers.
    const size_t edits = 1 + r.below(3);
    for (size_t e = 0; e < edits; e++) {
      std::string what;
      Span h;
      const bool structured = text || json_header(b, h);
      if (structured && r.below(3) != 0)
        b = in_header(b, [&](const Bytes& x) { return random_text_edit(r, x, what); });
      else
        b = random_byte_edit(r, seeds, b, what);
      name += (name.empty() ? "" : ", ") + what;
    }
    out.push_back({fmt::format("seed {}: {}", k, name), std::move(b)});
  }
  return out;
}

}  // namespace moelab::fuzz
