// Token shards and corpus readers: round trips, compressed inputs, malformed lines, and every
// bad-input case with its one-line message.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "data/corpus.hpp"
#include "data/shard.hpp"
#include "test_util.hpp"

using namespace moelab;
using moelab::test::error_of;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("moelab-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

void write_gz(const std::string& path, const std::string& data) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, data.data(), unsigned(data.size()));
  gzclose(f);
}

void write_zst(const std::string& path, const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3));
  write_file(path, out);
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

std::vector<std::string> read_docs(const CorpusSpec& spec, CorpusReport& rep) {
  std::vector<std::string> docs;
  corpus_read(
      spec, [&](std::string_view d) { docs.emplace_back(d); }, rep);
  return docs;
}

}  // namespace

// ----------------------------------------------------------------------------
TEST(Shard, RoundTripSixteenAndThirtyTwoBit) {
  TempDir dir;
  for (uint64_t vocab : {uint64_t(50000), uint64_t(201088)}) {
    const std::string path = dir / ("s" + std::to_string(vocab));
    {
      ShardWriter w(path, vocab, 0xABCDEF);
      w.append_document(std::vector<int32_t>{1, 2, 3});
      w.append_document(std::vector<int32_t>{int32_t(vocab - 1), 0});
      EXPECT_FALSE(fs::exists(path)) << "only the temporary name until close";
      w.close();
    }
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    Shard s(path, 0xABCDEF);
    EXPECT_EQ(s.header().token_bytes, vocab <= 65536 ? 2u : 4u);
    EXPECT_EQ(s.size(), 5u);
    EXPECT_EQ(s.header().n_documents, 2u);
    std::vector<int32_t> all(5);
    s.copy(all.data(), 0, 5);
    EXPECT_EQ(all, (std::vector<int32_t>{1, 2, 3, int32_t(vocab - 1), 0}));
    EXPECT_EQ(s.at(3), int32_t(vocab - 1));
    EXPECT_EQ(fs::file_size(path), 64 + 5 * s.header().token_bytes);
  }
}

TEST(Shard, WriterThatIsNotClosedLeavesNothing) {
  TempDir dir;
  const std::string path = dir / "x.tok";
  {
    ShardWriter w(path, 100, 1);
    w.append_document(std::vector<int32_t>{5, 6});
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  ShardWriter w(path, 100, 1);
  EXPECT_NE(error_of([&] {
              w.append_document(std::vector<int32_t>{100});
            }).find("token 100 outside the vocabulary of 100"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ShardWriter(dir / "no/such/dir/x", 100, 1); }).find("cannot write"),
            std::string::npos);
}

TEST(Shard, BadFilesFailWithOneLineNamingTheFile) {
  TempDir dir;
  const std::string good = dir / "good.tok";
  {
    ShardWriter w(good, 1000, 42);
    w.append_document(std::vector<int32_t>{1, 2, 3, 4});
    w.close();
  }
  std::string bytes;
  {
    std::ifstream f(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  auto variant = [&](const std::string& name, std::string b) {
    write_file(dir / name, b);
    return error_of([&] { Shard s(dir / name, 42); });
  };
  std::string b = bytes;
  b[0] = 'X';
  EXPECT_NE(variant("magic", b).find("magic: not a token shard (bad magic)"), std::string::npos);
  b = bytes;
  b[8] = 9;
  EXPECT_NE(variant("version", b).find("shard format version 9, this moelab reads versions 1 to 2"),
            std::string::npos);
  EXPECT_NE(variant("truncated", bytes.substr(0, bytes.size() - 1)).find("truncated"),
            std::string::npos);
  EXPECT_NE(variant("short", bytes.substr(0, 10)).find("not a token shard"), std::string::npos);
  EXPECT_NE(error_of([&] { Shard s(good, 7); }).find("tokenizer fingerprint"), std::string::npos);
  EXPECT_NE(error_of([&] { Shard s(dir / "missing.tok"); }).find("missing.tok: cannot open"),
            std::string::npos);
  for (const char* name : {"magic", "version", "truncated", "short"})
    EXPECT_EQ(variant(name, "").find('\n'), std::string::npos);
}

// ----------------------------------------------------------------------------
TEST(Corpus, TextFilesAndFoldersInSortedOrder) {
  TempDir dir;
  write_file(dir / "c/b.txt", "second");
  write_file(dir / "c/a.txt", "first\r\nline two");
  write_file(dir / "c/sub/z.txt", "third");
  write_file(dir / "c/.hidden", "never");
  write_file(dir / "c/empty.txt", "");
  CorpusReport rep;
  const auto docs = read_docs({{dir / "c"}}, rep);
  EXPECT_EQ(docs, (std::vector<std::string>{"first\r\nline two", "second", "third"}));
  EXPECT_EQ(rep.files, 4);
  EXPECT_EQ(rep.documents, 3);
  EXPECT_EQ(rep.malformed, 0);
  EXPECT_NE(
      error_of([&] { read_docs({{dir / "nope"}}, rep); }).find("nope: no such file or folder"),
      std::string::npos);
}

TEST(Corpus, JsonlPlainGzipAndZstdWithMalformedLinesReported) {
  TempDir dir;
  const std::string body =
      "{\"text\": \"alpha\", \"id\": 1}\n"
      "\n"
      "{\"text\": \"beta \\u00e9\"}\r\n"
      "not json\n"
      "[1, 2]\n"
      "{\"content\": \"x\"}\n"
      "{\"text\": 5}\n"
      "{\"text\": \"gamma\"}";  // no final newline
  write_file(dir / "d.jsonl", body);
  write_gz(dir / "d.jsonl.gz", body);
  write_zst(dir / "d.jsonl.zst", body);
  for (const char* name : {"d.jsonl", "d.jsonl.gz", "d.jsonl.zst"}) {
    CorpusReport rep;
    const auto docs = read_docs({{dir / name}}, rep);
    EXPECT_EQ(docs, (std::vector<std::string>{"alpha", "beta \xc3\xa9", "gamma"})) << name;
    EXPECT_EQ(rep.malformed, 4) << name;
    ASSERT_EQ(rep.problems.size(), 4u);
    const std::string file = dir / name;
    EXPECT_EQ(rep.problems[0], file + ":4: not valid JSON");
    EXPECT_EQ(rep.problems[1], file + ":5: not a JSON object");
    EXPECT_EQ(rep.problems[2], file + ":6: no \"text\" field");
    EXPECT_EQ(rep.problems[3], file + ":7: \"text\" is not a string");
  }
  CorpusReport rep;  // a configurable field
  CorpusSpec spec{{dir / "d.jsonl"}, CorpusFormat::Jsonl, "content"};
  EXPECT_EQ(read_docs(spec, rep), (std::vector<std::string>{"x"}));
  EXPECT_EQ(rep.malformed, 6);
}

TEST(Corpus, CompressedTextAndCorruptStreams) {
  TempDir dir;
  std::string big(300000, 'a');  // longer than one read chunk
  for (size_t i = 0; i < big.size(); i += 7) big[i] = '\n';
  write_zst(dir / "t.txt.zst", big);
  write_gz(dir / "t.txt.gz", big);
  for (const char* name : {"t.txt.zst", "t.txt.gz"}) {
    CorpusReport rep;
    EXPECT_EQ(read_docs({{dir / name}}, rep), (std::vector<std::string>{big})) << name;
  }
  write_file(dir / "bad.txt.zst", "definitely not zstd");
  CorpusReport rep;
  EXPECT_NE(error_of([&] { read_docs({{dir / "bad.txt.zst"}}, rep); }).find("corrupt zstd data"),
            std::string::npos);
  std::string z;
  {
    std::ifstream f(dir / "t.txt.zst", std::ios::binary);
    z.assign(std::istreambuf_iterator<char>(f), {});
  }
  write_file(dir / "cut.txt.zst", z.substr(0, z.size() / 2));
  EXPECT_NE(error_of([&] { read_docs({{dir / "cut.txt.zst"}}, rep); }).find("truncated zstd"),
            std::string::npos);
}

TEST(Corpus, TruncatedOrCorruptGzipIsRefusedNamingTheFile) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 20000; i++) text += "line " + std::to_string(i) + " of a gzip source\n";
  write_gz(dir / "whole.txt.gz", text);
  const std::string gz = read_bytes(dir / "whole.txt.gz");
  auto error = [&](const std::string& name, const std::string& bytes) {
    write_file(dir / name, bytes);
    CorpusReport rep;
    const std::string e = error_of([&] { read_docs({{dir / name}}, rep); });
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_EQ(e.rfind(dir / name, 0), 0u) << "names the file: " << e;
    return e;
  };
  // Cut anywhere, including inside the 8-byte CRC/length trailer: never half the text, exit 0.
  for (size_t cut : {size_t(10), gz.size() / 2, gz.size() - 8, gz.size() - 1})
    EXPECT_NE(error("cut.txt.gz", gz.substr(0, cut)).find("truncated gzip data"), std::string::npos)
        << "cut at " << cut << " of " << gz.size();
  std::string flipped = gz;
  flipped[gz.size() / 2] ^= 0x10;  // inside the deflate data
  EXPECT_NE(error("flip.txt.gz", flipped).find("corrupt gzip data"), std::string::npos);
  flipped = gz;
  flipped[gz.size() - 6] ^= 0x01;  // the CRC-32
  EXPECT_NE(error("crc.txt.gz", flipped).find("corrupt gzip data (incorrect data check)"),
            std::string::npos);
  EXPECT_NE(error("plain.txt.gz", "not gzip at all").find("corrupt gzip data"), std::string::npos);
  EXPECT_NE(error("empty.txt.gz", "").find("empty file, not gzip data"), std::string::npos);
  EXPECT_NE(error("tail.txt.gz", gz + "garbage").find("corrupt gzip data"), std::string::npos);
  EXPECT_NE(error("empty.txt.zst", "").find("empty file, not zstd data"), std::string::npos);
  // Concatenated members are one stream, as gzip -d reads them.
  write_gz(dir / "b.gz", "second member");
  write_file(dir / "two.txt.gz", gz + read_bytes(dir / "b.gz"));
  CorpusReport rep;
  EXPECT_EQ(read_docs({{dir / "two.txt.gz"}}, rep),
            (std::vector<std::string>{text + "second member"}));
}

TEST(Corpus, Utf8RepairReplacesMaximalSubpartsLikePython) {
  // Expected values from Python: bytes.decode("utf-8", "replace").
  const std::string R = "\xEF\xBF\xBD";
  struct Case {
    std::string in, out;
    int64_t invalid;
    size_t first;
  } cases[] = {
      {"plain ascii", "plain ascii", 0, 0},
      {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", 0,
       0},
      {"caf\xE9", "caf" + R, 1, 3},  // Latin-1
      {"a\xE2\x82"
       "b",
       "a" + R + "b", 2, 1},                      // a cut 3-byte sequence: one U+FFFD
      {"\xF0\x9F\x98", R, 3, 0},                  // cut at the end
      {"\xC0\xAF", R + R, 2, 0},                  // overlong
      {"\xED\xA0\x80", R + R + R, 3, 0},          // a surrogate
      {"\xF4\x90\x80\x80", R + R + R + R, 4, 0},  // above U+10FFFF
      {"x\x80\xBFy", "x" + R + R + "y", 2, 1},    // lone continuation bytes
  };
  for (const Case& c : cases) {
    std::string s = c.in;
    size_t first = 0;
    EXPECT_EQ(utf8_repair(s, &first), c.invalid) << c.out;
    EXPECT_EQ(s, c.out);
    if (c.invalid > 0) {
      EXPECT_EQ(first, c.first) << c.out;
    }
  }
}

TEST(Corpus, InvalidUtf8IsCountedAndMostlyBinaryFilesAreRefused) {
  TempDir dir;
  std::string latin1 = "Caf\xE9 cr\xE8me, a text in Latin-1 with a few accented letters.";
  write_file(dir / "c/latin1.txt", latin1);
  write_file(dir / "c/good.txt", "All valid: caf\xC3\xA9.");
  write_file(dir / "c/r.jsonl",
             "{\"text\": \"ok\"}\n{\"text\": \"bad \xFF byte\"}\n{\"text\": \"\xC3\xA9\"}\n");
  CorpusReport rep;
  const auto docs = read_docs({{dir / "c"}}, rep);
  ASSERT_EQ(docs.size(), 5u);
  EXPECT_EQ(docs[1],
            "Caf\xEF\xBF\xBD cr\xEF\xBF\xBDme, a text in Latin-1 with a few accented letters.");
  EXPECT_EQ(docs[3], "bad \xEF\xBF\xBD byte") << "a JSONL record with a bad byte is kept, repaired";
  EXPECT_EQ(rep.malformed, 0);
  EXPECT_EQ(rep.invalid_utf8_bytes, 3);
  ASSERT_EQ(rep.invalid_utf8.size(), 2u);
  EXPECT_EQ(
      rep.invalid_utf8[0],
      dir / "c/latin1.txt" + ": 2 bytes not valid UTF-8 replaced by U+FFFD, the first at byte 3");
  EXPECT_EQ(rep.invalid_utf8[1],
            dir / "c/r.jsonl" +
                ": 1 bytes not valid UTF-8 replaced by U+FFFD, the first at line 2, byte 14");

  // Mostly not text: refused with one line naming the file.
  std::string noise;
  for (int i = 0; i < 4096; i++) noise += char(0x80 + (i * 37) % 0x7f);  // no NUL, high bytes
  write_file(dir / "n/noise.txt", noise);
  std::string e = error_of([&] { read_docs({{dir / "n"}}, rep); });
  EXPECT_NE(e.find(dir / "n/noise.txt" + ": not UTF-8 text ("), std::string::npos) << e;
  write_file(dir / "z/utf16.txt", "h\0i\0"s);
  e = error_of([&] { read_docs({{dir / "z"}}, rep); });
  EXPECT_EQ(e, dir / "z/utf16.txt" + ": not a text file (a NUL byte at byte 1)");
  // In JSON Lines a NUL damages one record: that line is malformed, the others are read.
  write_file(dir / "j/bin.jsonl", "{\"text\": \"a\"}\n{\"te\0t\": 1}\n"s);
  CorpusReport jr;
  EXPECT_EQ(read_docs({{dir / "j"}}, jr).size(), 1u);
  ASSERT_EQ(jr.malformed, 1);
  EXPECT_EQ(jr.problems[0], dir / "j/bin.jsonl" + ":2: a NUL byte (not text)");
}

// ----------------------------------------------------------------------------
namespace {

std::string make_shard(const TempDir& dir, const std::string& name, uint64_t vocab,
                       std::vector<int32_t> tokens) {
  ShardWriter w(dir / name, vocab, 42);
  w.append_document(tokens);
  w.close();
  return read_bytes(dir / name);
}

ShardHeader header_of(const std::string& bytes) {
  ShardHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  return h;
}

std::string with_header(std::string bytes, const ShardHeader& h) {
  std::memcpy(bytes.data(), &h, sizeof h);
  return bytes;
}

}  // namespace

TEST(Shard, ChecksumFindsAnyFlippedByteAndNamesTheFile) {
  TempDir dir;
  const std::string good = make_shard(dir, "good.tok", 1000, {1, 2, 3, 4, 5, 6, 7, 8});
  const ShardHeader h = header_of(good);
  EXPECT_EQ(h.version, 2u);
  EXPECT_EQ(h.checksum, shard_checksum(h, {reinterpret_cast<const uint8_t*>(good.data()) + 64,
                                           good.size() - 64}));
  // Every byte of the file, header fields and tokens alike, is covered.
  for (size_t at : {size_t(16), size_t(24), size_t(40), size_t(48), size_t(56), size_t(64),
                    size_t(70), good.size() - 1}) {
    std::string b = good;
    b[at] ^= 0x01;
    write_file(dir / "bad.tok", b);
    const std::string e = error_of([&] { Shard s(dir / "bad.tok"); });
    EXPECT_NE(e.find(dir / "bad.tok: "), std::string::npos) << at << ": " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos);
    // A flip that leaves the header consistent is found by the checksum.
    if (at >= 40 || at == 16 || at == 24)
      EXPECT_NE(e.find("checksum mismatch"), std::string::npos) << at << ": " << e;
  }
  Shard s(dir / "good.tok", 42);  // and the good one opens
  EXPECT_EQ(s.size(), 8u);
}

TEST(Shard, TokenIdsOutsideTheVocabularyNeverReachTheCaller) {
  TempDir dir;
  std::string b = make_shard(dir, "v.tok", 1000, {1, 2, 3, 4});
  const uint16_t big = 60000;
  std::memcpy(b.data() + 64 + 2 * 2, &big, 2);  // token 2
  write_file(dir / "v.tok", b);
  // The checksum refuses it on open; opened without the checksum, reading it still fails.
  EXPECT_NE(error_of([&] { Shard s(dir / "v.tok"); }).find("checksum mismatch"), std::string::npos);
  const Shard s(dir / "v.tok", std::nullopt, ShardCheck::Header);
  std::vector<int32_t> out(4);
  s.copy(out.data(), 0, 2);  // the tokens before it are fine
  EXPECT_EQ(
      error_of([&] { s.copy(out.data(), 1, 3); }),
      dir / "v.tok" + ": token 2 is 60000, outside the vocabulary of 1000: the file is damaged");
  const Shard::BadTokens bad = s.tokens_outside_vocab();
  EXPECT_EQ(bad.count, 1u);
  EXPECT_EQ(bad.first, 2u);
  EXPECT_EQ(bad.first_id, 60000);
  // 32-bit ids: a negative one is outside too.
  std::string w = make_shard(dir, "w.tok", 100000, {5, 99999, 7});
  const int32_t neg = -3;
  std::memcpy(w.data() + 64 + 4, &neg, 4);
  write_file(dir / "w.tok", w);
  const Shard s32(dir / "w.tok", std::nullopt, ShardCheck::Header);
  EXPECT_NE(error_of([&] { s32.copy(out.data(), 0, 3); }).find("token 1 is 4294967293"),
            std::string::npos);
}

TEST(Shard, VersionOneStillReadsAndImpossibleHeadersAreRefused) {
  TempDir dir;
  const std::string good = make_shard(dir, "g.tok", 1000, {9, 8, 7});
  ShardHeader h = header_of(good);
  h.version = 1;  // what the first format wrote: no checksum, those bytes zero
  h.checksum = 0;
  write_file(dir / "v1.tok", with_header(good, h));
  const Shard v1(dir / "v1.tok", 42);
  EXPECT_FALSE(v1.has_checksum());
  EXPECT_EQ(v1.at(2), 7);
  auto refused = [&](const ShardHeader& bad) {
    write_file(dir / "bad.tok", with_header(good, bad));
    return error_of([&] { Shard s(dir / "bad.tok", std::nullopt, ShardCheck::Header); });
  };
  ShardHeader b = h;
  b.checksum = 5;
  EXPECT_NE(refused(b).find("version 1 with a checksum field"), std::string::npos);
  b = header_of(good);
  b.version = 3;
  EXPECT_NE(refused(b).find("shard format version 3, this moelab reads versions 1 to 2"),
            std::string::npos);
  b = header_of(good);
  b.n_tokens = (uint64_t(1) << 63) + 3;  // 64 + n * 2 wraps around to the file's size
  EXPECT_NE(refused(b).find("truncated or padded"), std::string::npos);
  b = header_of(good);
  b.vocab_size = 70000;  // cannot be held in 16-bit tokens
  EXPECT_NE(refused(b).find("vocabulary size 70000 impossible for 2-byte tokens"),
            std::string::npos);
  b = header_of(good);
  b.n_documents = 4;
  EXPECT_NE(refused(b).find("4 documents in 3 tokens"), std::string::npos);
}

// ----------------------------------------------------------------------------
namespace {

// A safetensors file from a header text and data bytes.
void write_st(const std::string& path, const std::string& header, const std::string& data) {
  const uint64_t n = header.size();
  std::string b(reinterpret_cast<const char*>(&n), 8);
  write_file(path, b + header + data);
}

}  // namespace

TEST(Safetensors, HeaderIsCheckedWholeAgainstTheFile) {
  TempDir dir;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<int64_t> b = {7, 8};
  const std::string path = dir / "t.safetensors";
  const std::vector<TensorRef> refs = {tensor_ref<float>("a", a, {2, 3}),
                                       tensor_ref<int64_t>("b", b, {2})};
  safetensors_write(path, refs);
  const auto back = safetensors_read(path);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back.at("a").as<float>()[5], 6.0f);
  const std::string bytes = read_bytes(path);
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  const std::string header = bytes.substr(8, hlen), data = bytes.substr(8 + hlen);
  ASSERT_EQ(data.size(), 6 * 4 + 2 * 8u);

  auto error = [&](const std::string& file_bytes) {
    write_file(dir / "x.safetensors", file_bytes);
    const std::string e = error_of([&] { safetensors_read(dir / "x.safetensors"); });
    EXPECT_EQ(e.rfind(dir / "x.safetensors: ", 0), 0u) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    return e;
  };
  // The header with each `from` replaced by its `to`, and the data unchanged.
  auto edited_all = [&](const std::vector<std::pair<std::string, std::string>>& edits) {
    std::string h = header;
    for (const auto& [from, to] : edits) {
      const size_t at = h.find(from);
      EXPECT_NE(at, std::string::npos) << from;
      if (at != std::string::npos) h.replace(at, from.size(), to);
    }
    const uint64_t n = h.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + h + data;
  };
  auto edited = [&](const std::string& from, const std::string& to) {
    return edited_all({{from, to}});
  };
  // bytes inserted, appended or missing: never tensors read from shifted offsets
  EXPECT_NE(error(bytes.substr(0, 8 + hlen + 4) + "XXXX" + bytes.substr(8 + hlen + 4))
                .find("bytes inserted into or appended to the file"),
            std::string::npos);
  EXPECT_NE(error(bytes + "\n").find("40 bytes but the data section has 41"), std::string::npos);
  EXPECT_NE(error(bytes.substr(0, bytes.size() - 8)).find("outside the data section"),
            std::string::npos);
  EXPECT_NE(error(bytes.substr(0, 20)).find("header length"), std::string::npos);
  EXPECT_NE(error("1234").find("shorter than 8 bytes"), std::string::npos);
  // renamed, missing and mistyped fields: the file and the tensor, never a json exception
  EXPECT_NE(error(edited("data_offsets", "data_offsetz"))
                .find("tensor 'a': unknown field 'data_offsetz'"),
            std::string::npos);
  EXPECT_NE(error(edited("\"dtype\":\"F32\",", "")).find("tensor 'a': 'dtype' is missing"),
            std::string::npos);
  EXPECT_NE(error(edited("\"F32\"", "\"F16\"")).find("tensor 'a': unsupported dtype 'F16'"),
            std::string::npos);
  EXPECT_NE(error(edited("[2,3]", "\"2x3\"")).find("tensor 'a': 'shape' is missing or not a list"),
            std::string::npos);
  EXPECT_NE(error(edited("[2,3]", "[-2,-3]")).find("'shape' must hold non-negative integers"),
            std::string::npos);
  EXPECT_NE(error(edited("[2,3]", "[3,3]")).find("the shape and dtype need 36"), std::string::npos);
  EXPECT_NE(error(edited("[2,3]", "[4294967296,4294967296]")).find("larger than the file"),
            std::string::npos);
  EXPECT_NE(error(edited("[0,24]", "[0,\"24\"]")).find("'data_offsets' is missing or not two"),
            std::string::npos);
  // offsets that overlap, or leave a gap, with sizes that agree with the shapes; a name with a
  // newline is shown escaped, so the message stays one line
  EXPECT_NE(error(edited_all({{"\"b\"", "\"a\\nb\""}, {"[24,40]", "[16,32]"}}))
                .find("tensor 'a\\x0ab' starts at byte 16 of the data section, inside the tensor "
                      "before it"),
            std::string::npos);
  EXPECT_NE(
      error(edited_all({{"[2,3]", "[1,3]"}, {"[0,24]", "[0,12]"}}))
          .find("tensor 'b' starts at byte 24 of the data section, leaving a gap after byte 12"),
      std::string::npos);
  EXPECT_NE(error(edited("{", "[")).find("header is not a JSON object"), std::string::npos);
  write_st(dir / "arr.safetensors", "[1, 2]", "");
  EXPECT_NE(error(read_bytes(dir / "arr.safetensors")).find("header is not a JSON object"),
            std::string::npos);
  write_st(dir / "meta.safetensors", "{\"__metadata__\": 5}", "");
  EXPECT_NE(error(read_bytes(dir / "meta.safetensors")).find("'__metadata__' is not a JSON object"),
            std::string::npos);
}
