// GGUF files (convert/gguf.*): q8_0 as ggml's quantize_row_q8_0_ref rounds (roundf: halves away
// from zero), the container written and read back (every value kind, every storage type), bad
// files refused in one line, and the merges recovered from tiktoken ranks. Whether llama.cpp runs
// the files is tests/e2e/gguf_test.sh's part.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "convert/gguf.hpp"
#include "core/safetensors.hpp"

namespace moelab {
namespace {

namespace fs = std::filesystem;

fs::path temp(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / fmt::format("moelab_gguf_{}", ::getpid());
  fs::create_directories(d);
  return d / name;
}

TEST(Gguf, Q8BlockAsGgmlRoundsIt) {
  // amax 127: d = 1 exactly, so x * (1/d) = x and roundf's halves show (2.5 -> 3, -2.5 -> -3;
  // nearbyint would give 2 and -2)
  std::vector<float> x(32, 0.f);
  x[0] = 127.f, x[1] = 2.5f, x[2] = -2.5f, x[3] = 0.49f, x[4] = -127.f, x[5] = 3.5f;
  std::vector<uint8_t> q;
  gguf_quantize_q8_0(x, q);
  ASSERT_EQ(q.size(), 34u);
  uint16_t d = 0;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(f16_to_float(d), 1.f);
  EXPECT_EQ(int8_t(q[2]), 127);
  EXPECT_EQ(int8_t(q[3]), 3);
  EXPECT_EQ(int8_t(q[4]), -3);
  EXPECT_EQ(int8_t(q[5]), 0);
  EXPECT_EQ(int8_t(q[6]), -127);
  EXPECT_EQ(int8_t(q[7]), 4);
  // a block of zeros: d = 0, every q 0. Elsewhere q is rounded with the unrounded 1/d and the
  // scale stored as f16 (2^-11 relative): within d/2 + 127 d 2^-11 of x
  std::vector<float> y(64);
  for (size_t i = 0; i < 32; i++) y[32 + i] = std::sin(float(i)) * 0.37f;
  gguf_quantize_q8_0(y, q);
  const std::vector<float> back = gguf_dequantize(GgmlType::Q8_0, q, 64);
  for (size_t i = 0; i < 32; i++) EXPECT_EQ(back[i], 0.f);
  std::memcpy(&d, q.data() + 34, 2);
  const float bound = f16_to_float(d) * (0.5f + 127.f / 2048.f);
  for (size_t i = 32; i < 64; i++) EXPECT_LE(std::fabs(back[i] - y[i]), bound) << i;
}

TEST(Gguf, FileRoundTrip) {
  GgufFile f;
  GgufValue u, fl, st, b, as, af, ai;
  u.kind = GgufValue::Kind::U32, u.u = 4000000000u;
  fl.kind = GgufValue::Kind::F32, fl.f = 1e-5;
  st.kind = GgufValue::Kind::Str, st.s = "gpt-oss";
  b.kind = GgufValue::Kind::Bool, b.b = true;
  as.kind = GgufValue::Kind::ArrStr, as.strs = {"a", "", "\xe2\x96\x81x"};
  af.kind = GgufValue::Kind::ArrF32, af.f32s = {-1.5f, 0.f};
  ai.kind = GgufValue::Kind::ArrI32, ai.i32s = {1, 3, 6};
  f.kv = {{"u", u}, {"f", fl}, {"s", st}, {"b", b}, {"as", as}, {"af", af}, {"ai", ai}};
  std::vector<float> w(64);
  for (size_t i = 0; i < w.size(); i++) w[i] = float(i) - 20.5f;
  GgufTensor t32{"t32", {4, 16}, GgmlType::F32, {}};
  t32.bytes.resize(256);
  std::memcpy(t32.bytes.data(), w.data(), 256);
  GgufTensor t16{"t16", {3}, GgmlType::F16, {1, 2, 3, 4, 5, 6}};
  GgufTensor tq{"tq", {32, 2}, GgmlType::Q8_0, {}};
  gguf_quantize_q8_0(w, tq.bytes);
  f.tensors = {t32, t16, tq};
  const std::string path = temp("rt.gguf").string();
  gguf_write(path, f);
  const GgufFile g = gguf_read(path);
  ASSERT_EQ(g.kv.size(), f.kv.size());
  EXPECT_EQ(g.find("u")->u, 4000000000u);
  EXPECT_EQ(float(g.find("f")->f), 1e-5f);
  EXPECT_EQ(g.find("s")->s, "gpt-oss");
  EXPECT_TRUE(g.find("b")->b);
  EXPECT_EQ(g.find("as")->strs, as.strs);
  EXPECT_EQ(g.find("af")->f32s, af.f32s);
  EXPECT_EQ(g.find("ai")->i32s, ai.i32s);
  ASSERT_EQ(g.tensors.size(), 3u);
  for (size_t i = 0; i < 3; i++) {
    EXPECT_EQ(g.tensors[i].name, f.tensors[i].name);
    EXPECT_EQ(g.tensors[i].ne, f.tensors[i].ne);
    EXPECT_EQ(g.tensors[i].type, f.tensors[i].type);
    EXPECT_EQ(g.tensors[i].bytes, f.tensors[i].bytes);
  }
  EXPECT_EQ(gguf_dequantize(GgmlType::F32, g.tensors[0].bytes, 64), w);
  // tensor data starts aligned to 32 bytes (ggml maps it)
  std::ifstream in(path, std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(all.size() % 32, 0u);
  // truncated, and not GGUF: one line naming the file
  std::ofstream(temp("cut.gguf"), std::ios::binary) << all.substr(0, all.size() - 40);
  EXPECT_THROW(
      {
        try {
          gguf_read(temp("cut.gguf").string());
        } catch (const std::exception& e) {
          EXPECT_NE(std::string(e.what()).find("cut.gguf"), std::string::npos) << e.what();
          throw;
        }
      },
      std::exception);
  std::ofstream(temp("no.gguf"), std::ios::binary) << "GGUX" << all.substr(4);
  EXPECT_THROW(gguf_read(temp("no.gguf").string()), std::exception);
  fs::remove_all(temp("").parent_path());
}

TEST(Gguf, MergesFromTiktokenRanks) {
  // ranks: a b c ' ' ab abc bc ' a'; a special at 8, vocabulary 10
  const std::string path = temp("toy.tiktoken").string();
  std::ofstream(path) << "YQ== 0\nYg== 1\nYw== 2\nIA== 3\nYWI= 4\nYWJj 5\nYmM= 6\nIGE= 7\n";
  TiktokenSpec spec;
  spec.special = {{"<|endoftext|>", 8}};
  const GgufBpeVocab v = gguf_bpe_from_tiktoken(path, spec, 10);
  // abc merges as ab + c (ab ranks below bc); the space is GPT-2's byte-level U+0120
  EXPECT_EQ(v.merges, (std::vector<std::string>{"a b", "ab c", "b c", "\xc4\xa0 a"}));
  EXPECT_EQ(v.tokens[3], "\xc4\xa0");
  EXPECT_EQ(v.tokens[7],
            "\xc4\xa0"
            "a");
  EXPECT_EQ(v.tokens[8], "<|endoftext|>");
  EXPECT_EQ(v.tokens[9], "[PAD9]");
  EXPECT_EQ(v.types, (std::vector<int32_t>{1, 1, 1, 1, 1, 1, 1, 1, 3, 5}));
  EXPECT_THROW(gguf_bpe_from_tiktoken(path, spec, 8), std::exception);  // below the tokenizer
  fs::remove_all(temp("").parent_path());
}

}  // namespace
}  // namespace moelab
