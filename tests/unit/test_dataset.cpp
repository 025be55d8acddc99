// Data directories end to end: prepare (tokenizer, shards, subsets at document ends, validation
// slices, malformed lines), open, and the loader (shifted targets, a permutation per epoch,
// exact resume), plus the bad-input cases.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "data/dataset.hpp"
#include "data/shard.hpp"
#include "test_util.hpp"

using namespace moelab;
using moelab::test::error_of;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Corpus {
  fs::path dir;
  std::vector<std::string> jsonl_docs;
  Corpus() {
    dir = fs::temp_directory_path() /
          ("moelab-ds-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir / "text");
    for (int i = 0; i < 3; i++) {
      std::ofstream f(dir / "text" / ("doc" + std::to_string(i) + ".txt"));
      for (int l = 0; l < 40; l++)
        f << "Line " << l << " of document " << i << " in the text folder.\n";
    }
    std::ofstream f(dir / "docs.jsonl");
    for (int i = 0; i < 200; i++) {
      jsonl_docs.push_back("Record " + std::to_string(i) + " says hello to record " +
                           std::to_string(i * 7 % 13) + ".");
      f << json({{"text", jsonl_docs.back()}, {"id", i}}).dump() << "\n";
      if (i == 100) f << "{\"text\": oops}\n";  // line 102
    }
  }
  ~Corpus() { fs::remove_all(dir); }
  json spec(const std::string& tokenizer = "tiktoken") const {
    json tok = tokenizer == "tiktoken" ? json{{"kind", "tiktoken"}, {"encoding", "r50k_base"}}
                                       : json{{"kind", "sentencepiece"}, {"vocab_size", 300}};
    return {{"tokenizer", tok},
            {"sources",
             {{"text", {{"paths", {(dir / "text").string()}}}},
              {"records", {{"paths", {(dir / "docs.jsonl").string()}}}}}},
            {"subsets",
             {{"A", {"text"}},
              {"B", {{{"source", "records"}, {"end", 0.5}}}},
              {"C", {{{"source", "records"}, {"begin", 0.5}}}}}},
            {"validation_fraction", 0.1},
            {"shard_tokens", 500}};
  }
};

}  // namespace

TEST(Dataset, PrepareCutsSubsetsAtDocumentEndsAndReportsMalformedLines) {
  Corpus c;
  const std::string out = (c.dir / "data").string();
  data_prepare(data_spec_from_json(c.spec(), "spec", ""), out, 2);
  const DataDir d = data_open(out);
  const json& m = *d.manifest;
  EXPECT_EQ(m["sources"]["records"]["documents"], 200);
  EXPECT_EQ(m["sources"]["records"]["malformed"], 1);
  EXPECT_NE(m["sources"]["records"]["problems"][0].get<std::string>().find(
                "docs.jsonl:102: not valid JSON"),
            std::string::npos);
  EXPECT_GT(m["sources"]["records"]["shards"].size(), 2u) << "shard_tokens 500 rolls shards";
  // The source holds every document followed by an end-of-text token.
  uint64_t want = 0;
  for (const std::string& doc : c.jsonl_docs) want += d.tokenizer->encode(doc).size() + 1;
  EXPECT_EQ(m["sources"]["records"]["tokens"].get<uint64_t>(), want);
  // B and C split the records at a document end and together hold all of them.
  uint64_t covered = 0;
  for (const char* sub : {"B", "C"})
    for (const char* split : {"train", "val"})
      for (const TokenRange& r : d.ranges(sub, split)) {
        covered += r.end - r.begin;
        const Shard s(r.shard, d.fingerprint);
        EXPECT_EQ(s.at(r.end - 1), d.eot) << sub << " " << split << " ends inside a document";
        if (r.begin > 0) {
          EXPECT_EQ(s.at(r.begin - 1), d.eot);
        }
      }
  EXPECT_EQ(covered, want);
  for (const char* sub : {"A", "B", "C"}) {
    const uint64_t tr = m["subsets"][sub]["train_tokens"], va = m["subsets"][sub]["val_tokens"];
    EXPECT_GT(tr, 0u) << sub;
    EXPECT_GT(va, 0u) << sub;
    // At least the requested 10%, from a document start: one of A's three documents; a few
    // short records for B and C.
    EXPECT_GE(double(va), 0.1 * double(tr + va) - 1) << sub;
    EXPECT_LT(double(va), (std::string(sub) == "A" ? 0.4 : 0.15) * double(tr + va)) << sub;
  }
  EXPECT_NE(error_of([&] {
              data_prepare(data_spec_from_json(c.spec(), "spec", ""), out, 2);
            }).find("already holds a prepared data set"),
            std::string::npos);
}

// A random document-level split: parts of one seed with complementary split ranges take each
// document once, whole, scattered through the source; another seed splits differently.
TEST(Dataset, SeededPartsSplitTheDocumentsAtRandom) {
  Corpus c;
  json spec = c.spec();
  auto part = [](int seed, double begin, double end) {
    return json{{"source", "records"}, {"split", {{"seed", seed}, {"begin", begin}, {"end", end}}}};
  };
  spec["subsets"] = {{"A", {part(3, 0, 0.7)}},
                     {"B", {part(3, 0.7, 1)}},
                     {"other", {part(4, 0, 0.7)}},
                     {"half", {{{"source", "records"}, {"end", 0.5}, {"split", {{"seed", 3}}}}}}};
  const std::string out = (c.dir / "data").string();
  data_prepare(data_spec_from_json(spec, "spec", ""), out, 2);
  const DataDir d = data_open(out);
  // every document of a subset as the set of its first tokens' stream positions
  auto documents = [&](const std::string& sub) {
    std::set<std::pair<std::string, uint64_t>> starts;
    size_t ranges = 0;
    for (const char* split : {"train", "val"}) {
      for (const TokenRange& r : d.ranges(sub, split)) {
        const Shard s(r.shard, d.fingerprint);
        EXPECT_EQ(s.at(r.end - 1), d.eot) << sub << " ends inside a document";
        if (r.begin > 0) {
          EXPECT_EQ(s.at(r.begin - 1), d.eot) << sub << " starts inside a document";
        }
        uint64_t start = r.begin;
        for (uint64_t i = r.begin; i < r.end; i++) {
          if (s.at(i) == d.eot) {
            starts.insert({r.shard, start});
            start = i + 1;
          }
        }
        ranges++;
      }
    }
    EXPECT_GT(ranges, 4u) << sub << ": the documents are scattered, not one stretch";
    return starts;
  };
  const auto a = documents("A"), b = documents("B"), other = documents("other");
  // Documents cut by a shard boundary count once per shard; the 200 records are all there.
  std::set<std::pair<std::string, uint64_t>> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::inserter(both, both.end()));
  EXPECT_TRUE(both.empty()) << "A and B share documents";
  EXPECT_GE(a.size() + b.size(), 200u);
  EXPECT_LE(a.size() + b.size(), 200u + d.manifest->at("sources")["records"]["shards"].size());
  // about 70% of the documents (binomial: 140 +- 6.5)
  EXPECT_GT(a.size(), 110u);
  EXPECT_LT(a.size(), 175u);
  EXPECT_NE(a, other) << "another seed, another split";
  // A split within a stream range stays inside it: the first half of the records, every document
  // of it (split end 1).
  const uint64_t records = d.manifest->at("sources")["records"]["tokens"].get<uint64_t>();
  uint64_t half = 0;
  for (const char* split : {"train", "val"}) {
    for (const TokenRange& r : d.ranges("half", split)) {
      half += r.end - r.begin;
    }
  }
  EXPECT_GT(half, records * 4 / 10);
  EXPECT_LT(half, records * 6 / 10);
  // the split's seed is a positive integer and its range within [0, 1]
  spec["subsets"]["A"][0]["split"]["seed"] = 0;
  EXPECT_NE(error_of([&] {
              data_spec_from_json(spec, "spec", "");
            }).find("'subsets.A[0].split.seed' must be a positive integer"),
            std::string::npos);
  spec["subsets"]["A"][0]["split"] = {{"seed", 3}, {"begin", 0.8}, {"end", 0.2}};
  EXPECT_NE(error_of([&] {
              data_spec_from_json(spec, "spec", "");
            }).find("'subsets.A[0].split' needs 0 <= begin < end <= 1"),
            std::string::npos);
}

TEST(Dataset, LoaderShiftsTargetsPermutesEachEpochAndResumesExactly) {
  Corpus c;
  const std::string out = (c.dir / "data").string();
  data_prepare(data_spec_from_json(c.spec("sentencepiece"), "spec", ""), out, 2);
  const DataDir d = data_open(out);
  DataLoader a(d, "B", "train", 16, 7);
  ASSERT_GT(a.sequences(), 10u);
  for (uint64_t epoch : {0, 1}) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < a.sequences(); i++) seen.insert(a.sequence_at(epoch, i));
    EXPECT_EQ(seen.size(), a.sequences());
    EXPECT_EQ(*seen.rbegin(), a.sequences() - 1);
  }
  EXPECT_NE(a.sequence_at(0, 0) * 1000 + a.sequence_at(0, 1),
            a.sequence_at(1, 0) * 1000 + a.sequence_at(1, 1));
  std::vector<int32_t> tok, tgt;
  a.next(4, tok, tgt);
  for (int b = 0; b < 4; b++)
    for (int t = 0; t + 1 < 16; t++)
      EXPECT_EQ(tgt[size_t(b * 16 + t)], tok[size_t(b * 16 + t + 1)]);
  for (int i = 0; i < 5; i++) a.next(4, tok, tgt);
  const LoaderPosition saved = a.position();
  std::vector<std::vector<int32_t>> after;
  for (int i = 0; i < 10; i++) {  // crosses an epoch boundary
    a.next(4, tok, tgt);
    after.push_back(tok);
  }
  DataLoader b(d, "B", "train", 16, 7);
  b.seek(saved);
  for (int i = 0; i < 10; i++) {
    b.next(4, tok, tgt);
    EXPECT_EQ(tok, after[size_t(i)]) << "batch " << i << " after resume";
  }
  DataLoader other_seed(d, "B", "train", 16, 8);
  std::vector<int32_t> t1, t2, g;
  DataLoader same(d, "B", "train", 16, 7);
  same.next(8, t1, g);
  other_seed.next(8, t2, g);
  EXPECT_NE(t1, t2);
}

TEST(Dataset, BadInputNamesTheFieldOrFile) {
  Corpus c;
  auto spec_error = [&](const std::function<void(json&)>& edit) {
    json j = c.spec();
    edit(j);
    return error_of([&] { data_spec_from_json(j, "spec.json", ""); });
  };
  EXPECT_NE(
      spec_error([](json& j) { j["colour"] = 1; }).find("spec.json: 'colour' is not a known key"),
      std::string::npos);
  EXPECT_NE(spec_error([](json& j) {
              j["subsets"]["B"][0]["source"] = "nope";
            }).find("'subsets.B[0]' names an unknown source 'nope'"),
            std::string::npos);
  EXPECT_NE(spec_error([](json& j) {
              j["subsets"]["C"][0]["begin"] = 1.5;
            }).find("'subsets.C[0]' needs 0 <= begin < end <= 1"),
            std::string::npos);
  EXPECT_NE(
      spec_error([](json& j) { j["tokenizer"]["kind"] = "wordpiece"; }).find("tokenizer.kind"),
      std::string::npos);
  EXPECT_NE(spec_error([](json& j) {
              j["sources"]["text"]["paths"] = json::array();
            }).find("'sources.text.paths' must be a non-empty list"),
            std::string::npos);
  const std::string out = (c.dir / "data").string();
  data_prepare(data_spec_from_json(c.spec(), "spec", ""), out, 2);
  const DataDir d = data_open(out);
  EXPECT_NE(error_of([&] { d.ranges("Z", "train"); }).find("no subset 'Z' (has: A, B, C)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { DataLoader(d, "A", "val", 100000, 1); }).find("fewer than one sequence"),
            std::string::npos);
  // A manifest whose fingerprint does not match the tokenizer in the directory is refused.
  json m = *d.manifest;
  m["tokenizer"]["fingerprint"] = "0000000000000000";
  std::ofstream(fs::path(out) / "manifest.json") << m.dump();
  EXPECT_NE(error_of([&] { data_open(out); }).find("does not match the manifest"),
            std::string::npos);
  EXPECT_NE(error_of([&] { data_open((c.dir / "text").string()); }).find("no manifest.json"),
            std::string::npos);
}

TEST(Dataset, DamagedShardsAreNamedBeforeAnyTokenReachesAModel) {
  Corpus c;
  const std::string out = (c.dir / "data").string();
  data_prepare(data_spec_from_json(c.spec(), "spec", ""), out, 2);
  const DataDir d = data_open(out);
  const std::vector<TokenRange> rs = d.ranges("B", "train");
  ASSERT_FALSE(rs.empty());
  const std::string shard = rs[0].shard;
  std::string bytes;
  {
    std::ifstream f(shard, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  auto rewrite = [&](const std::string& b) {
    fs::remove(shard);  // a new file: the checksum is verified again
    std::ofstream(shard, std::ios::binary) << b;
  };
  // A flipped token byte: the checksum names the file when the loader opens it.
  const size_t at = 64 + 2 * size_t(rs[0].begin + 3);
  std::string b = bytes;
  b[at + 1] = char(0xFF);  // token 3 of the range becomes >= 65280, outside r50k's 50257
  rewrite(b);
  EXPECT_EQ(
      error_of([&] { DataLoader(d, "B", "train", 8, 1); }).find(shard + ": checksum mismatch"), 0u);
  // The same damage in a version-1 shard (no checksum): the id is caught where it is read.
  ShardHeader h;
  std::memcpy(&h, b.data(), sizeof h);
  h.version = 1;
  h.checksum = 0;
  std::memcpy(b.data(), &h, sizeof h);
  rewrite(b);
  DataLoader l(d, "B", "train", 8, 1);
  std::vector<int32_t> tok, tgt;
  const std::string e = error_of([&] {
    for (uint64_t i = 0; i < l.sequences(); i++) l.next(1, tok, tgt);
  });
  EXPECT_EQ(e.find(fmt::format("{}: token {} is ", shard, rs[0].begin + 3)), 0u) << e;
  EXPECT_NE(e.find("outside the vocabulary of 50257"), std::string::npos) << e;
  // A version-1 header whose vocabulary is not the tokenizer's.
  rewrite(bytes);
  std::memcpy(&h, bytes.data(), sizeof h);
  h.version = 1;
  h.checksum = 0;
  h.vocab_size = 60000;
  b = bytes;
  std::memcpy(b.data(), &h, sizeof h);
  rewrite(b);
  EXPECT_NE(error_of([&] {
              DataLoader(d, "B", "train", 8, 1);
            }).find("vocabulary size 60000 does not match the tokenizer's 50257"),
            std::string::npos);
  // A manifest range that names a file outside the directory.
  json m = *d.manifest;
  m["subsets"]["B"]["train"][0]["shard"] = "../elsewhere.tok";
  std::ofstream(fs::path(out) / "manifest.json") << m.dump();
  EXPECT_NE(error_of([&] {
              data_open(out).ranges("B", "train");
            }).find("names the shard '../elsewhere.tok', not a file name in the directory"),
            std::string::npos);
  m["subsets"]["B"]["train"][0] = {{"shard", 5}};
  std::ofstream(fs::path(out) / "manifest.json") << m.dump();
  EXPECT_NE(error_of([&] { data_open(out).ranges("B", "train"); }).find("malformed subset 'B'"),
            std::string::npos);
}

TEST(Dataset, EveryMalformedSpecIsOneLineNamingTheField) {
  Corpus c;
  auto spec_error = [&](const std::function<void(json&)>& edit) {
    json j = c.spec();
    edit(j);
    const std::string e = error_of([&] { data_spec_from_json(j, "spec.json", ""); });
    EXPECT_EQ(e.rfind("spec.json: ", 0), 0u) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    return e;
  };
  auto has = [](const std::string& e, const std::string& what) {
    EXPECT_NE(e.find(what), std::string::npos) << e;
  };
  has(spec_error([](json& j) { j = json::array({1}); }), "spec.json: must be an object");
  has(spec_error([](json& j) { j["subsets"]["B"][0].erase("source"); }),
      "'subsets.B[0].source' is missing");
  has(spec_error([](json& j) { j["subsets"]["B"][0]["source"] = 3; }),
      "'subsets.B[0].source' must be a string");
  has(spec_error([](json& j) { j["subsets"]["B"][0]["end"] = "half"; }),
      "'subsets.B[0].end' must be a number");
  has(spec_error([](json& j) { j["subsets"]["B"] = {5}; }), "'subsets.B[0]' must be an object");
  has(spec_error([](json& j) { j["subsets"]["B"] = "records"; }),
      "'subsets.B' must be a non-empty list");
  has(spec_error([](json& j) { j["sources"]["text"] = "x"; }), "'sources.text' must be an object");
  has(spec_error([](json& j) { j["sources"]["text"]["paths"] = {1}; }),
      "'sources.text.paths' must hold non-empty strings");
  has(spec_error([](json& j) { j["sources"]["text"]["paths"] = {""}; }),
      "'sources.text.paths' must hold non-empty strings");
  has(spec_error([](json& j) { j["sources"]["text"]["format"] = true; }),
      "'sources.text.format' must be a string");
  has(spec_error([](json& j) { j["sources"]["../up"] = j["sources"]["text"]; }),
      "'sources.../up' is not a usable name");
  has(spec_error([](json& j) { j["tokenizer"] = "tiktoken"; }), "'tokenizer' must be an object");
  has(spec_error([](json& j) { j["tokenizer"]["vocab_size"] = -5; }),
      "'tokenizer.vocab_size' must be a positive integer");
  has(spec_error([](json& j) { j["tokenizer"]["sample_mb"] = uint64_t(1) << 62; }),
      "'tokenizer.sample_mb' must be a positive integer (at most 1073741824)");
  has(spec_error([](json& j) { j["shard_tokens"] = 1.5; }), "'shard_tokens' must be a positive");
  has(spec_error([](json& j) { j["shard_tokens"] = uint64_t(-1); }), "'shard_tokens' must be");
  has(spec_error([](json& j) { j["validation_fraction"] = nullptr; }),
      "'validation_fraction' must be a number");
  has(spec_error([](json& j) { j["sources"] = json::object(); }), "'sources' must name at least");
  has(spec_error([](json& j) { j["tokenizer"]["encoding"] = "zz"; }),
      "'tokenizer.encoding' must name a known encoding: unknown tiktoken encoding 'zz'");
  // Read from a file: any JSON error, a number beyond double included, is one line too.
  const std::string file = (c.dir / "spec.json").string();
  std::ofstream(file) << "{\"validation_fraction\": 1e999}";
  EXPECT_EQ(error_of([&] {
              data_spec_load(file);
            }).rfind(file + ": invalid JSON ([json.exception.out_of_range.406] number overflow", 0),
            0u);
  std::ofstream(file) << "{\"sources\": ";
  EXPECT_EQ(error_of([&] { data_spec_load(file); }).rfind(file + ": invalid JSON (", 0), 0u);
  EXPECT_EQ(error_of([&] { data_spec_load(file + ".missing"); }), file + ".missing: cannot open");
}

// A source with "tokenizer_sample": false is encoded but left out of the tokenizer's training
// sample: adding it (a new language for a later phase) leaves the vocabulary and every other
// source's shards byte for byte as they were.
TEST(Dataset, SourceLeftOutOfTheTokenizerSampleLeavesTheVocabularyAsIs) {
  Corpus c;
  auto prepare = [&](const json& spec, const std::string& name) {
    const std::string out = (c.dir / name).string();
    data_prepare(data_spec_from_json(spec, "spec", ""), out, 2);
    return out;
  };
  auto fingerprint = [](const std::string& dir) {
    return data_open(dir).manifest->at("tokenizer").at("fingerprint").get<std::string>();
  };
  auto bytes_of = [](const fs::path& file) {
    std::ifstream f(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  json alone = c.spec("sentencepiece");
  alone["sources"].erase("records");
  alone["subsets"] = {{"A", {"text"}}};
  json added = c.spec("sentencepiece");
  added["sources"]["records"]["tokenizer_sample"] = false;
  const json sampled = c.spec("sentencepiece");
  const std::string dir_alone = prepare(alone, "alone");
  const std::string dir_added = prepare(added, "added");
  const std::string dir_sampled = prepare(sampled, "sampled");
  EXPECT_EQ(fingerprint(dir_alone), fingerprint(dir_added));
  EXPECT_NE(fingerprint(dir_alone), fingerprint(dir_sampled));  // the records do move it
  EXPECT_EQ(bytes_of(fs::path(dir_alone) / "text-00000.tok"),
            bytes_of(fs::path(dir_added) / "text-00000.tok"));
  EXPECT_GT(data_open(dir_added).ranges("B", "train").size(), 0u);
  // Bad values: one line naming the field; no source left to train the tokenizer on.
  json bad = added;
  bad["sources"]["records"]["tokenizer_sample"] = "no";
  EXPECT_NE(error_of([&] {
              data_spec_from_json(bad, "spec.json", "");
            }).find("'sources.records.tokenizer_sample' must be true or false"),
            std::string::npos);
  bad = added;
  bad["sources"]["text"]["tokenizer_sample"] = false;
  EXPECT_NE(
      error_of([&] { prepare(bad, "none"); }).find("every source sets tokenizer_sample to false"),
      std::string::npos);
}
