// GGUF files (convert/gguf.*): q8_0 as ggml's quantize_row_q8_0_ref rounds (roundf: halves away
// from zero), the container written and read back (every value kind, every storage type), bad
// files refused in one line (lengths and offsets from the file that would wrap in 64 bits among
// them), the import's trainer state from the moelab keys, and the merges recovered from tiktoken
// ranks. Whether llama.cpp runs
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
  x[0] = 127.f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  x[4] = -127.f;
  x[5] = 3.5f;
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
  u.kind = GgufValue::Kind::U32;
  u.uint_value = 4000000000u;
  fl.kind = GgufValue::Kind::F32;
  fl.float_value = 1e-5;
  st.kind = GgufValue::Kind::Str;
  st.text = "gpt-oss";
  b.kind = GgufValue::Kind::Bool;
  b.bool_value = true;
  as.kind = GgufValue::Kind::ArrStr;
  as.strs = {"a", "", "\xe2\x96\x81x"};
  af.kind = GgufValue::Kind::ArrF32;
  af.f32s = {-1.5f, 0.f};
  ai.kind = GgufValue::Kind::ArrI32;
  ai.i32s = {1, 3, 6};
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
  EXPECT_EQ(g.find("u")->uint_value, 4000000000u);
  EXPECT_EQ(float(g.find("f")->float_value), 1e-5f);
  EXPECT_EQ(g.find("s")->text, "gpt-oss");
  EXPECT_TRUE(g.find("b")->bool_value);
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

// Crafted files: little-endian integers and GGUF strings (u64 length + bytes).
std::string le32(uint32_t v) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &v, 4);
  return s;
}
std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}
std::string gguf_str(const std::string& s) {
  return le64(s.size()) + s;
}

// gguf_read's error on the file BYTES, or "" when it reads it.
std::string read_error(const std::string& name, const std::string& bytes) {
  const std::string path = temp(name).string();
  std::ofstream(path, std::ios::binary) << bytes;
  try {
    gguf_read(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Gguf, LengthsFromTheFileCannotWrap) {
  // one metadata array of element type ET and length N (2^62 u32s: N * 4 wraps to 0 in 64 bits;
  // 2^61 u64s, which are skipped: N * 8 wraps to 0 too), then 64 bytes
  const auto array_file = [](uint32_t et, uint64_t n) {
    return "GGUF" + le32(3) + le64(0) + le64(1) + gguf_str("a") + le32(9) + le32(et) + le64(n) +
           std::string(64, '\0');
  };
  const std::string truncated = temp("arr.gguf").string() + ": truncated GGUF file";
  EXPECT_EQ(read_error("arr.gguf", array_file(4, uint64_t(1) << 62)), truncated);   // u32
  EXPECT_EQ(read_error("arr.gguf", array_file(6, uint64_t(1) << 62)), truncated);   // f32
  EXPECT_EQ(read_error("arr.gguf", array_file(10, uint64_t(1) << 61)), truncated);  // u64
  EXPECT_EQ(read_error("arr.gguf", array_file(8, uint64_t(1) << 62)), truncated);   // strings
  EXPECT_EQ(read_error("arr.gguf", array_file(4, 16)), "");  // 64 bytes hold 16 u32s

  // one F32 tensor of dims NE at offset 0 of the (32-aligned) data, or at 2^64 - data0 (WRAP),
  // which data0 + offset wraps to 0, the file's first bytes; then 64 bytes
  const auto tensor_file = [](std::vector<uint64_t> ne, bool wrap) {
    std::string h = "GGUF" + le32(3) + le64(1) + le64(0) + gguf_str("t") + le32(ne.size());
    for (uint64_t n : ne) h += le64(n);
    h += le32(0);
    const uint64_t data0 = (h.size() + 8 + 31) / 32 * 32;
    h += le64(wrap ? uint64_t(0) - data0 : 0);
    return h + std::string(data0 - h.size() + 64, '\0');
  };
  const std::string beyond =
      temp("t.gguf").string() + ": tensor 't' lies beyond the end of the file";
  // 4 dims of 2^40: 2^160 values, 0 after wrapping
  const uint64_t big = uint64_t(1) << 40;
  EXPECT_EQ(read_error("t.gguf", tensor_file({big, big, big, big}, false)), beyond);
  EXPECT_EQ(read_error("t.gguf", tensor_file({big}, false)), beyond);
  EXPECT_EQ(read_error("t.gguf", tensor_file({1}, true)), beyond);
  EXPECT_EQ(read_error("t.gguf", tensor_file({16}, false)), "");  // 64 bytes hold 16 floats
  EXPECT_EQ(read_error("t.gguf", tensor_file({17}, false)), beyond);
  fs::remove_all(temp("").parent_path());
}

TEST(Gguf, ImportStateRefusesMalformedKeys) {
  const auto state_of = [](const std::string& fingerprint, const std::string& merged) {
    GgufFile f;
    GgufValue fp, mg;
    fp.kind = GgufValue::Kind::Str;
    fp.text = fingerprint;
    mg.kind = GgufValue::Kind::Str;
    mg.text = merged;
    f.kv = {{"moelab.tokenizer_fingerprint", fp}, {"moelab.merged", mg}};
    return gguf_import_state(f, "x.gguf");
  };
  const auto error_of = [&](const std::string& fingerprint, const std::string& merged) {
    try {
      state_of(fingerprint, merged);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const nlohmann::json ok = state_of("18446744073709551615", R"({"ders":"lowrank:3"})");
  EXPECT_EQ(ok["tokenizer_fingerprint"].get<uint64_t>(), 18446744073709551615u);
  EXPECT_EQ(ok["merged"]["ders"], "lowrank:3");
  EXPECT_EQ(ok["step"], 0);
  const std::string bad_fp =
      "x.gguf: key 'moelab.tokenizer_fingerprint' is not a decimal fingerprint";
  for (const char* fp : {"abc", "", "12x", "-1", " 12", "18446744073709551616"}) {
    EXPECT_EQ(error_of(fp, "{}"), bad_fp) << fp;
  }
  const std::string bad_merged = "x.gguf: key 'moelab.merged' is not a JSON object";
  EXPECT_EQ(error_of("1", "{\"lora\":"), bad_merged);
  EXPECT_EQ(error_of("1", "[1]"), bad_merged);
  // a file without either key (written before they existed) imports with step 0 only
  const nlohmann::json bare = gguf_import_state(GgufFile{}, "x.gguf");
  EXPECT_FALSE(bare.contains("tokenizer_fingerprint"));
  EXPECT_FALSE(bare.contains("merged"));
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
