#pragma once
// Corpus readers: plain text files (one document each) and JSONL with a configurable text field
// (the FineWeb / FineWeb-Edu layout), each optionally .gz or .zst; files or folders (walked in
// sorted order). Malformed JSONL lines are counted and reported with file and line, never
// silently dropped and never fatal. Bytes that are not valid UTF-8 are replaced by U+FFFD,
// counted and reported per file; a file that is mostly not text (more than a tenth of its bytes
// invalid, or for plain text a NUL byte; a JSONL line with one is malformed) is refused. A
// truncated or corrupt .gz/.zst stream is refused.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

// Decompressing byte stream over a plain, .gz or .zst file. A compressed file must hold whole,
// intact streams: a truncated or corrupt one fails with one line naming the file.
class ByteReader {
 public:
  explicit ByteReader(const std::string& path);
  ~ByteReader();
  ByteReader(const ByteReader&) = delete;
  ByteReader& operator=(const ByteReader&) = delete;
  size_t read(char* dst, size_t n);  // 0 at the end
  std::string read_all();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Lines of a (possibly compressed) file, without their line endings.
class LineReader {
 public:
  explicit LineReader(const std::string& path) : in_(path) {}
  bool next(std::string& line);
  int64_t line_number() const { return line_no_; }

 private:
  ByteReader in_;
  std::string buf_;
  size_t pos_ = 0;
  bool eof_ = false;
  int64_t line_no_ = 0;
};

enum class CorpusFormat { Auto, Text, Jsonl };

struct CorpusSpec {
  std::vector<std::string> paths;            // files or folders
  CorpusFormat format = CorpusFormat::Auto;  // Auto: .jsonl/.json(.gz/.zst) is JSONL, else text
  std::string text_field = "text";
};

struct CorpusReport {
  int64_t files = 0, documents = 0, bytes = 0, malformed = 0;
  std::vector<std::string> problems;      // "file:line: why", the first kMaxProblems
  int64_t invalid_utf8_bytes = 0;         // replaced by U+FFFD
  std::vector<std::string> invalid_utf8;  // "file: N bytes ..., the first at ...", per file
  static constexpr size_t kMaxProblems = 100;
};

// A file is refused as not text when more than this fraction of its bytes is not UTF-8.
inline constexpr double kMaxInvalidUtf8Fraction = 0.1;

// Replaces every maximal ill-formed subsequence of s by U+FFFD (the Unicode standard's
// recommended practice, as Python's errors="replace" does); returns the number of bytes replaced
// and, when any were, the offset of the first in *first.
int64_t utf8_repair(std::string& s, size_t* first = nullptr);

// The length of the well-formed UTF-8 sequence at s[i] (1 for ASCII), or 0 if it is ill-formed
// (overlong forms, surrogates and code points above U+10FFFF included).
size_t utf8_length_at(std::string_view s, size_t i);

// Calls on_document for every document, in a fixed order.
void corpus_read(const CorpusSpec& spec, const std::function<void(std::string_view)>& on_document,
                 CorpusReport& report);

// The files a spec names, folders expanded (sorted, hidden entries skipped).
std::vector<std::string> corpus_files(const CorpusSpec& spec);

}  // namespace moelab
