// Token shards and corpus readers: round trips, compressed inputs, malformed lines, and every
// bad-input case with its one-line message.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "data/corpus.hpp"
#include "data/shard.hpp"
#include "test_util.hpp"

using namespace moelab;
using moelab::test::error_of;
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
