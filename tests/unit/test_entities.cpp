// Entity lists, tokenisation variants and the token-id multi-pattern matcher.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <nlohmann/json.hpp>
#include "core/rng.hpp"
#include "data/dataset.hpp"
#include "data/entities.hpp"
#include "test_util.hpp"
using json = nlohmann::json;

using namespace moelab;
using moelab::test::error_of;
namespace fs = std::filesystem;

TEST(Entities, MatcherFindsExactlyWhatANaiveSearchFinds) {
  // Small alphabet, overlapping patterns, patterns inside patterns.
  std::vector<std::vector<int32_t>> pats;
  for (int p = 0; p < 60; p++) {
    std::vector<int32_t> v(size_t(1 + rng_u64(1, uint64_t(p), 0) % 4));
    for (size_t i = 0; i < v.size(); i++) v[i] = int32_t(rng_u64(2, uint64_t(p), i) % 3);
    if (std::find(pats.begin(), pats.end(), v) == pats.end()) pats.push_back(v);
  }
  TokenMatcher m;
  for (size_t p = 0; p < pats.size(); p++) m.add(pats[p], int32_t(p));
  m.build();
  std::vector<int32_t> text(3000);
  for (size_t i = 0; i < text.size(); i++) text[i] = int32_t(rng_u64(3, 0, i) % 3);
  std::vector<std::pair<int64_t, int32_t>> got, want;
  m.scan(text, [&](int64_t end, int32_t v) { got.emplace_back(end, v); });
  for (size_t p = 0; p < pats.size(); p++)
    for (size_t i = 0; i + pats[p].size() <= text.size(); i++)
      if (std::equal(pats[p].begin(), pats[p].end(), text.begin() + long(i)))
        want.emplace_back(int64_t(i + pats[p].size()), int32_t(p));
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_GT(want.size(), 1000u);
}

TEST(Entities, ListsAndTokenisationVariants) {
  const std::string dir =
      (fs::temp_directory_path() / ("moelab-ent-" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  std::ofstream(dir + "/titles.txt") << "lillian_gish\nNew_York\n\nlillian_gish\n";
  std::ofstream(dir + "/typed.tsv") << "Lillian Gish\tPER\nParis\tLOC\n";
  std::ofstream(dir + "/badtype.tsv") << "Paris\tCITY\n";
  std::ofstream(dir + "/empty.txt") << "\n\n";
  const auto titles = entities_load(dir + "/titles.txt");
  ASSERT_EQ(titles.size(), 2u);
  EXPECT_EQ(titles[0].name, "lillian gish");
  EXPECT_EQ(titles[1].name, "New York");
  EXPECT_EQ(titles[0].type, "MISC");
  const auto typed = entities_load(dir + "/typed.tsv");
  EXPECT_EQ(typed[1].type, "LOC");
  EXPECT_NE(error_of([&] { entities_load(dir + "/badtype.tsv"); }).find("type 'CITY' of 'Paris'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { entities_load(dir + "/empty.txt"); }).find("empty.txt: no entities"),
            std::string::npos);
  fs::remove_all(dir);

  // r50k: "lillian gish" as written and title-cased, with and without the leading space.
  const TiktokenSpec spec = tiktoken_spec("r50k_base");
  const auto tok = tiktoken_load(
      moelab_cache_dir() + "/npm/gpt-tokenizer@4.0.0/data/" + spec.ranks + ".tiktoken", spec);
  const auto v = entity_variants(*tok, "lillian gish");
  EXPECT_EQ(v.size(), 4u);
  // Every variant is found in running text that uses it.
  TokenMatcher m;
  for (size_t i = 0; i < v.size(); i++) m.add(v[i], 7);
  m.build();
  for (const char* text :
       {"The actress Lillian Gish starred.", "lillian gish, again", "Lillian Gish"}) {
    int hits = 0;
    m.scan(tok->encode(text), [&](int64_t, int32_t value) { hits += value == 7; });
    EXPECT_EQ(hits, 1) << text;
  }
  // Word boundaries: a match that a longer word continues is not the entity.
  const std::vector<bool> cont = tokens_continuing_word(*tok);
  ASSERT_EQ(cont.size(), size_t(tok->vocab_size()));
  auto continues = [&](const std::string& text, const std::string& after) {
    const auto ids = tok->encode(text + after);
    const size_t n = tok->encode(text).size();
    return n < ids.size() && bool(cont[size_t(ids[n])]);
  };
  EXPECT_TRUE(continues("The Ammon", "ites came"));
  EXPECT_FALSE(continues("The Ammon", " came"));
  EXPECT_FALSE(continues("The Ammon", ", and"));
  EXPECT_FALSE(continues("The Ammon", "'s son"));
}

// ----------------------------------------------------------------------------
#include "eval/evalset.hpp"

TEST(EvalSet, TopAndBottomHalfSelectionOnAHandMadeTable) {
  // Entities 0..5 seen in A (6 is not): the top half in A is {0, 1, 2} (counts 9, 8, 7), the
  // bottom half in B is {1, 2, 5} (counts 0, 1, 1) -> C = {1, 2}.
  const std::vector<int64_t> a = {9, 8, 7, 3, 2, 1, 0}, b = {5, 0, 1, 9, 4, 1, 0};
  const auto c = entity_select(a, b, 50, 50);
  EXPECT_EQ(c, (std::vector<bool>{false, true, true, false, false, false, false}));
  EXPECT_EQ(entity_select(a, b, 100, 100),
            (std::vector<bool>{true, true, true, true, true, true, false}));
}

TEST(EvalSet, BuildCutsWindowsAroundTheEntityAndRefusesBadInput) {
  const fs::path dir = fs::temp_directory_path() / ("moelab-evs-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "a");
  fs::create_directories(dir / "b");
  // A mentions Quentin Zorbag often, B rarely; Paris is common in both.
  for (int i = 0; i < 20; i++) {
    std::ofstream f(dir / "a" / ("d" + std::to_string(i) + ".txt"));
    for (int k = 0; k < 6; k++)
      f << "In the year " << (1900 + i * 7 + k) << " the famous explorer Quentin Zorbag travelled "
        << "from the northern hills to Paris with " << k + 2 << " companions and many books.\n";
  }
  for (int i = 0; i < 20; i++)
    std::ofstream(dir / "b" / ("d" + std::to_string(i) + ".txt"))
        << "A market day in Paris: bread, cheese, " << i << " apples, and Paris again.\n";
  std::ofstream(dir / "ents.tsv") << "Quentin Zorbag\tPER\nParis\tLOC\nNowhere Land\tLOC\n";
  const json spec = {
      {"tokenizer", {{"kind", "tiktoken"}, {"encoding", "r50k_base"}}},
      {"sources",
       {{"a", {{"paths", {(dir / "a").string()}}}}, {"b", {{"paths", {(dir / "b").string()}}}}}},
      {"subsets", {{"A", {"a"}}, {"B", {"b"}}}},
      {"validation_fraction", 0.0}};
  data_prepare(data_spec_from_json(spec, "spec", ""), (dir / "data").string(), 2);
  EntityBuildOptions o;
  o.data_dir = (dir / "data").string();
  o.entities = (dir / "ents.tsv").string();
  o.out = (dir / "ev.jsonl").string();
  o.prompt = 8;
  o.target = 6;
  entities_build(o);
  const DataDir d = data_open(o.data_dir);
  const EvalSet set = evalset_load(o.out, d.fingerprint);
  ASSERT_EQ(set.names, (std::vector<std::string>{"Quentin Zorbag"}));
  EXPECT_EQ(set.types[0], "PER");
  EXPECT_EQ(int64_t(set.samples.size()), o.max_per_entity);
  const auto ent = d.tokenizer->encode(" Quentin Zorbag");
  for (const EvalSample& s : set.samples) {
    ASSERT_EQ(s.in_prompt.size(), 8u);
    ASSERT_EQ(s.ex_prompt.size(), 8u);
    ASSERT_EQ(s.target.size(), 6u);
    EXPECT_TRUE(std::equal(ent.begin(), ent.end(), s.in_prompt.end() - long(ent.size())));
    EXPECT_EQ(d.tokenizer->decode(s.target).rfind(" travelled", 0), 0u);
    // ex_prompt + entity = the tail of in_prompt extended backwards
    std::vector<int32_t> joined = s.ex_prompt;
    joined.insert(joined.end(), ent.begin(), ent.end());
    EXPECT_TRUE(std::equal(s.in_prompt.begin(), s.in_prompt.end(), joined.end() - 8));
  }
  // another tokenizer's fingerprint is refused; C empty is an error
  EXPECT_NE(
      error_of([&] { evalset_load(o.out, d.fingerprint + 1); }).find("made with another tokenizer"),
      std::string::npos);
  std::ofstream(dir / "none.txt") << "Nowhere Land\n";
  o.entities = (dir / "none.txt").string();
  EXPECT_NE(error_of([&] { entities_build(o); }).find("the entity set C is empty"),
            std::string::npos);
  fs::remove_all(dir);
}

// ----------------------------------------------------------------------------
// malformed input: one line naming file:line and what is wrong, never a crash

namespace {

// A scratch folder per test, removed at the end.
struct Scratch {
  fs::path dir;
  explicit Scratch(const std::string& name)
      : dir(fs::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return (dir / name).string();
  }
};

// The error must be one line that starts with "PATH:LINE: " and contains `what`.
void expect_refused(const std::string& err, const std::string& where, const std::string& what,
                    const std::string& label) {
  EXPECT_EQ(err.find('\n'), std::string::npos) << label << ": " << err;
  EXPECT_EQ(err.rfind(where + ": ", 0), 0u) << label << ": " << err;
  EXPECT_NE(err.find(what), std::string::npos) << label << ": " << err;
}

}  // namespace

TEST(Entities, ListReaderRefusesDamagedLinesWithFileAndLine) {
  const Scratch s("moelab-entbad");
  const std::string ok = "Paris\tLOC\n";
  const std::string huge(kEntityMaxBytes + 1, 'x');
  const std::vector<std::tuple<std::string, std::string, int, std::string>> cases = {
      {"nul", ok + std::string("Par\0is\n", 7), 2, "a NUL byte at byte 4"},
      {"utf8", ok + "Caf\xc3\n", 2, "not valid UTF-8 at byte 4"},
      {"overlong", ok + "\xc0\xaf\n", 2, "not valid UTF-8 at byte 1"},
      {"surrogate", ok + "a\xed\xa0\x80\n", 2, "not valid UTF-8 at byte 2"},
      {"latin1", "M\xfcnchen\tLOC\n", 1, "not valid UTF-8"},
      {"control", ok + "Pa\x1bris\n", 2, "control character 0x1b at byte 3"},
      {"cr inside", "Pa\rris\tLOC\n", 1, "control character 0x0d"},
      {"huge", ok + ok + huge + "\n", 3, "a line of 1025 bytes"},
      {"two tabs", "Paris\tLOC\tcity\n", 1, R"(type 'LOC\x09city' of 'Paris')"},
      {"empty type", "Paris\t\n", 1, "type '' of 'Paris'"},
      {"type only", "\tPER\n", 1, "type PER without a name"},
      {"bad type", "\n\nParis\tCITY\n", 3, "type 'CITY' of 'Paris' is not PER, LOC, ORG or MISC"},
      {"lower type", "Paris\tloc\n", 1, "type 'loc'"},
  };
  for (const auto& [label, bytes, line, what] : cases) {
    const std::string path = s.write(label, bytes);
    expect_refused(error_of([&] { entities_load(path); }), path + ":" + std::to_string(line), what,
                   label);
  }
  // a long name is cut in the message
  const std::string long_type = "Paris\t" + std::string(200, 'T') + "\n";
  const std::string path = s.write("long_type", long_type);
  const std::string err = error_of([&] { entities_load(path); });
  EXPECT_LT(err.size(), path.size() + 140) << err;
  // files with no entity at all
  for (const char* bytes : {"", "\n\n", "  \n_\n", "\r\n"})
    EXPECT_EQ(error_of([&] { entities_load(s.write("none", bytes)); }),
              (s.dir / "none").string() + ": no entities");
  EXPECT_NE(error_of([&] { entities_load(s.dir.string()); }).find("is a folder"),
            std::string::npos);
  EXPECT_NE(error_of([&] { entities_load((s.dir / "absent").string()); }).find("cannot open"),
            std::string::npos);
}

TEST(Entities, ListReaderAcceptsWhatTheFormatsAllow) {
  const Scratch s("moelab-entok");
  // CRLF, blank lines, spaces around name and type, underscores, UTF-8, a last line without \n
  const auto e = entities_load(s.write(
      "ok",
      "\r\n  Paris \t LOC \r\n\nS\xc3\xa3o_Paulo\tLOC\nZ\xc3\xbcrich\n\xe6\x9d\xb1\xe4\xba\xac"));
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[0].name, "Paris");
  EXPECT_EQ(e[0].type, "LOC");
  EXPECT_EQ(e[1].name, "S\xc3\xa3o Paulo");
  EXPECT_EQ(e[2].type, "MISC");
  EXPECT_EQ(e[3].name, "\xe6\x9d\xb1\xe4\xba\xac");
  // the longest name allowed
  EXPECT_EQ(entities_load(s.write("long", std::string(kEntityMaxBytes, 'y')))[0].name.size(),
            kEntityMaxBytes);
}

// ----------------------------------------------------------------------------
// the evaluation set loader

namespace {

const std::string kHead =
    R"({"format":"moelab-evalset","version":1,"fingerprint":"0000000000000abc","prompt":3,"target":2,"subset":"A"})";
const std::string kSample =
    R"({"entity":"Paris","type":"LOC","surface":"Paris","in_prompt":[1,2,3],"ex_prompt":[4,5,6],"target":[7,8]})";

// A JSON line with one field's value replaced (or the field removed when value is empty).
std::string with_field(const std::string& line, const std::string& key, const std::string& value) {
  json j = json::parse(line);
  if (value.empty())
    j.erase(key);
  else
    j[key] = json::parse(value);
  return j.dump();
}
std::string sample_with(const std::string& key, const std::string& value) {
  return with_field(kSample, key, value);
}
std::string head_with(const std::string& key, const std::string& value) {
  return with_field(kHead, key, value);
}

}  // namespace

TEST(EvalSet, LoaderRefusesMalformedSetsWithFileLineAndField) {
  const Scratch s("moelab-evbad");
  const EvalSetLimits lim{.tokenizer_vocab = 50, .model_vocab = 64, .max_positions = 16};
  struct Case {
    std::string label, text;
    int line;
    std::string what;
    EvalSetLimits lim;
  };
  const std::string ok = kSample + "\n";
  const std::vector<Case> cases = {
      {"head array", "[1,2]\n" + ok, 1, "not a moelab evaluation set", lim},
      {"head garbage", "\xff\xfe{\n", 1, "not a moelab evaluation set", lim},
      {"head format", head_with("format", R"("other")") + "\n" + ok, 1, "not a moelab", lim},
      {"head version", head_with("version", "") + "\n" + ok, 1, "'version' must be 1", lim},
      {"head version 2", head_with("version", "2") + "\n" + ok, 1, "'version' must be 1", lim},
      {"fp missing", head_with("fingerprint", "") + "\n" + ok, 1, "'fingerprint' is missing", lim},
      {"fp number", head_with("fingerprint", "2748") + "\n" + ok, 1,
       "'fingerprint' must be a string", lim},
      {"fp not hex", head_with("fingerprint", R"("abz")") + "\n" + ok, 1,
       "'fingerprint' must be 1 to 16 hex digits", lim},
      {"fp too long", head_with("fingerprint", R"("00000000000000000abc")") + "\n" + ok, 1,
       "'fingerprint'", lim},
      {"fp sign", head_with("fingerprint", R"("-abc")") + "\n" + ok, 1, "'fingerprint'", lim},
      {"subset", head_with("subset", "[]") + "\n" + ok, 1, "'subset' must be a string", lim},
      {"prompt missing", head_with("prompt", "") + "\n" + ok, 1, "'prompt' is missing", lim},
      {"prompt string", head_with("prompt", R"("3")") + "\n" + ok, 1,
       "'prompt' must be a non-negative integer", lim},
      {"prompt float", head_with("prompt", "3.5") + "\n" + ok, 1,
       "'prompt' must be a non-negative integer", lim},
      {"target negative", head_with("target", "-2") + "\n" + ok, 1,
       "'target' must be a non-negative integer", lim},
      {"target huge", head_with("target", "18446744073709551615") + "\n" + ok, 1,
       "'target' must be a non-negative integer", lim},
      {"prompt 0", head_with("prompt", "0") + "\n" + ok, 1,
       "'prompt' and 'target' must be positive", lim},
      {"positions", head_with("prompt", "15") + "\n", 1,
       "'prompt' + 'target' = 17 exceeds the model's 16 positions", lim},
      {"sample garbage", kHead + "\n" + ok + "{\"entity\":\n", 3, "not a JSON object", lim},
      {"sample array", kHead + "\n[]\n", 2, "not a JSON object", lim},
      {"sample null", kHead + "\nnull\n", 2, "not a JSON object", lim},
      {"sample nul byte",
       kHead + "\n" + kSample.substr(0, 10) + std::string(1, '\0') + kSample.substr(10) + "\n", 2,
       "not a JSON object", lim},
      {"entity missing", kHead + "\n" + sample_with("entity", "") + "\n", 2, "'entity' is missing",
       lim},
      {"entity number", kHead + "\n" + sample_with("entity", "7") + "\n", 2,
       "'entity' must be a string", lim},
      {"entity blank", kHead + "\n" + sample_with("entity", R"(" ")") + "\n", 2,
       "'entity' is blank", lim},
      {"type", kHead + "\n" + sample_with("type", R"("CITY")") + "\n", 2,
       "'type' must be PER, LOC, ORG or MISC", lim},
      {"type list", kHead + "\n" + sample_with("type", R"(["LOC"])") + "\n", 2,
       "'type' must be a string", lim},
      {"type changes", kHead + "\n" + ok + sample_with("type", R"("PER")") + "\n", 3,
       "'type' PER differs from the LOC", lim},
      {"surface", kHead + "\n" + sample_with("surface", "{}") + "\n", 2,
       "'surface' must be a string", lim},
      {"surface blank", kHead + "\n" + sample_with("surface", R"("")") + "\n", 2,
       "'surface' is blank", lim},
      {"in_prompt empty", kHead + "\n" + sample_with("in_prompt", "[]") + "\n", 2,
       "'in_prompt' has 0 tokens, the header says 3", lim},
      {"ex_prompt empty", kHead + "\n" + ok + sample_with("ex_prompt", "[]") + "\n", 3,
       "'ex_prompt' has 0 tokens, the header says 3", lim},
      {"target empty", kHead + "\n" + sample_with("target", "[]") + "\n", 2,
       "'target' has 0 tokens, the header says 2", lim},
      {"target long", kHead + "\n" + sample_with("target", "[7,8,9]") + "\n", 2,
       "'target' has 3 tokens, the header says 2", lim},
      {"ex_prompt missing", kHead + "\n" + sample_with("ex_prompt", "") + "\n", 2,
       "'ex_prompt' is missing", lim},
      {"target string", kHead + "\n" + sample_with("target", R"("7 8")") + "\n", 2,
       "'target' must be a list of token ids", lim},
      {"target object", kHead + "\n" + sample_with("target", "{}") + "\n", 2,
       "'target' must be a list of token ids", lim},
      {"in_prompt strings", kHead + "\n" + sample_with("in_prompt", R"(["1","2","3"])") + "\n", 2,
       "'in_prompt'[0] is not an integer token id", lim},
      {"in_prompt float", kHead + "\n" + sample_with("in_prompt", "[1,2.0,3]") + "\n", 2,
       "'in_prompt'[1] is not an integer token id", lim},
      {"in_prompt null", kHead + "\n" + sample_with("in_prompt", "[1,2,null]") + "\n", 2,
       "'in_prompt'[2] is not an integer token id", lim},
      {"in_prompt nested", kHead + "\n" + sample_with("in_prompt", "[1,[2],3]") + "\n", 2,
       "'in_prompt'[1] is not an integer token id", lim},
      {"negative id", kHead + "\n" + sample_with("ex_prompt", "[4,-1,6]") + "\n", 2,
       "'ex_prompt'[1] = -1 is a negative token id", lim},
      {"tokenizer bound", kHead + "\n" + sample_with("target", "[7,50]") + "\n", 2,
       "'target'[1] = 50 is not below the tokenizer's vocabulary (50)", lim},
      {"model bound",
       kHead + "\n" + sample_with("target", "[64,8]") + "\n",
       2,
       "'target'[0] = 64 is not below the model's vocab_size (64)",
       {.tokenizer_vocab = 100, .model_vocab = 64}},
      {"int32 bound",
       kHead + "\n" + sample_with("target", "[7,2147483648]") + "\n",
       2,
       "'target'[1] = 2147483648 is not a token id",
       {}},
      {"uint64 id", kHead + "\n" + sample_with("target", "[7,18446744073709551615]") + "\n", 2,
       "'target'[1] = 18446744073709551615 is not below the tokenizer's", lim},
  };
  for (const Case& c : cases) {
    const std::string path = s.write("set.jsonl", c.text);
    expect_refused(error_of([&] { evalset_load(path, 0xabc, c.lim); }),
                   path + ":" + std::to_string(c.line), c.what, c.label);
  }
  EXPECT_EQ(error_of([&] { evalset_load(s.write("empty", ""), 0xabc, lim); }),
            (s.dir / "empty").string() + ": empty evaluation set");
  EXPECT_NE(error_of([&] { evalset_load(s.dir.string(), 0xabc, lim); }).find("is a folder"),
            std::string::npos);
}

TEST(EvalSet, LoaderAcceptsWellFormedSets) {
  const Scratch s("moelab-evok");
  // blank lines, CRLF line ends, type and surface left out (MISC, the entity)
  const std::string text =
      kHead + "\r\n\r\n" + kSample + "\r\n" +
      R"({"entity":"Rome","in_prompt":[0,49,3],"ex_prompt":[4,5,6],"target":[7,8]})" + "\n\n";
  const EvalSet set = evalset_load(s.write("ok", text), 0xabc,
                                   {.tokenizer_vocab = 50, .model_vocab = 50, .max_positions = 5});
  ASSERT_EQ(set.samples.size(), 2u);
  EXPECT_EQ(set.names, (std::vector<std::string>{"Paris", "Rome"}));
  EXPECT_EQ(set.types, (std::vector<std::string>{"LOC", "MISC"}));
  EXPECT_EQ(set.samples[1].surface, "Rome");
  EXPECT_EQ(set.samples[1].in_prompt, (std::vector<int32_t>{0, 49, 3}));
  // an empty set, as the frozen set may be, round-trips with lengths 0
  EvalSet none;
  none.fingerprint = 0xabc;
  evalset_write((s.dir / "none").string(), none);
  EXPECT_TRUE(evalset_load((s.dir / "none").string(), 0xabc, {.max_positions = 5}).samples.empty());
  // what evalset_write writes loads back unchanged
  evalset_write((s.dir / "again").string(), set);
  const EvalSet back = evalset_load((s.dir / "again").string(), 0xabc);
  EXPECT_EQ(back.names, set.names);
  EXPECT_EQ(back.types, set.types);
  EXPECT_EQ(back.samples[0].target, set.samples[0].target);
}
