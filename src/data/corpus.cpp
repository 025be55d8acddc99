#include "data/corpus.hpp"

#include <fmt/format.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moelab {

namespace fs = std::filesystem;

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// ----------------------------------------------------------------------------
// bytes

struct ByteReader::Impl {
  std::string path;
  enum { Plain, Gzip, Zstd } kind = Plain;
  FILE* f = nullptr;
  std::vector<char> zin;  // compressed input
  // gzip: inflate itself (not gzread, which reads a file cut inside a stream as if it ended
  // there and a file that is not gzip at all as plain bytes)
  z_stream gz{};
  bool gz_init = false;
  // zstd
  ZSTD_DCtx* zd = nullptr;
  ZSTD_inBuffer in{nullptr, 0, 0};
  // a stream (gzip member, zstd frame) is started and not finished; one has been finished
  bool stream_open = false, stream_seen = false;

  size_t fill(char* dst, size_t n) {
    const size_t got = std::fread(dst, 1, n, f);
    if (got < n && std::ferror(f))
      fail(fmt::format("{}: read error ({})", path, std::strerror(errno)));
    return got;
  }
  size_t read_gzip(char* dst, size_t n);
  size_t read_zstd(char* dst, size_t n);
  [[noreturn]] void truncated(const char* what) const {
    fail(fmt::format("{}: truncated {} data (the file ends inside a compressed stream)", path,
                     what));
  }
};

ByteReader::ByteReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.f = std::fopen(path.c_str(), "rb");
  if (!m.f) fail(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  if (ends_with(path, ".gz")) {
    m.kind = Impl::Gzip;
    // 16 + MAX_WBITS: a gzip wrapper, whose CRC-32 and length trailer inflate checks
    if (inflateInit2(&m.gz, 16 + MAX_WBITS) != Z_OK) fail(path + ": cannot start zlib");
    m.gz_init = true;
    m.zin.resize(1 << 16);
  } else if (ends_with(path, ".zst")) {
    m.kind = Impl::Zstd;
    m.zd = ZSTD_createDCtx();
    m.zin.resize(ZSTD_DStreamInSize());
  }
}

ByteReader::~ByteReader() {
  if (impl_->f) std::fclose(impl_->f);
  if (impl_->gz_init) inflateEnd(&impl_->gz);
  if (impl_->zd) ZSTD_freeDCtx(impl_->zd);
}

size_t ByteReader::read(char* dst, size_t n) {
  Impl& m = *impl_;
  switch (m.kind) {
    case Impl::Plain:
      return m.fill(dst, n);
    case Impl::Gzip:
      return m.read_gzip(dst, n);
    case Impl::Zstd:
      return m.read_zstd(dst, n);
  }
  return 0;
}

// Concatenated members are read one after another (as gzip -d does); anything else after a
// member, a cut inside one, or a bad CRC fails.
size_t ByteReader::Impl::read_gzip(char* dst, size_t n) {
  const uInt want = uInt(std::min<size_t>(n, 1u << 30));
  gz.next_out = reinterpret_cast<Bytef*>(dst);
  gz.avail_out = want;
  while (gz.avail_out == want) {
    bool at_end = false;
    if (gz.avail_in == 0) {
      gz.next_in = reinterpret_cast<Bytef*>(zin.data());
      gz.avail_in = uInt(fill(zin.data(), zin.size()));
      at_end = gz.avail_in == 0;
    }
    if (at_end && !stream_open) {
      if (!stream_seen) fail(fmt::format("{}: empty file, not gzip data", path));
      break;
    }
    stream_open = true;
    const int r = inflate(&gz, Z_NO_FLUSH);
    if (r == Z_STREAM_END) {
      stream_open = false;
      stream_seen = true;
      inflateReset(&gz);
    } else if (r == Z_BUF_ERROR || (r == Z_OK && at_end && gz.avail_out == want)) {
      if (at_end) truncated("gzip");  // inflate wants input the file does not have
    } else if (r != Z_OK) {
      fail(fmt::format("{}: corrupt gzip data ({})", path, gz.msg ? gz.msg : zError(r)));
    }
  }
  return want - gz.avail_out;
}

size_t ByteReader::Impl::read_zstd(char* dst, size_t n) {
  ZSTD_outBuffer out{dst, n, 0};
  while (out.pos == 0) {
    if (in.pos == in.size) {
      in = {zin.data(), fill(zin.data(), zin.size()), 0};
      if (in.size == 0) {
        if (stream_open) truncated("zstd");
        if (!stream_seen) fail(fmt::format("{}: empty file, not zstd data", path));
        return 0;
      }
    }
    const size_t r = ZSTD_decompressStream(zd, &out, &in);
    if (ZSTD_isError(r))
      fail(fmt::format("{}: corrupt zstd data ({})", path, ZSTD_getErrorName(r)));
    stream_open = r != 0;
    stream_seen = stream_seen || r == 0;
  }
  return out.pos;
}

std::string ByteReader::read_all() {
  std::string s;
  char buf[1 << 16];
  for (size_t n; (n = read(buf, sizeof buf)) > 0;) s.append(buf, n);
  return s;
}

bool LineReader::next(std::string& line) {
  while (true) {
    const size_t nl = buf_.find('\n', pos_);
    if (nl != std::string::npos) {
      line.assign(buf_, pos_, nl - pos_);
      pos_ = nl + 1;
      break;
    }
    if (eof_) {
      if (pos_ >= buf_.size()) return false;
      line.assign(buf_, pos_);
      pos_ = buf_.size();
      break;
    }
    buf_.erase(0, pos_);
    pos_ = 0;
    char chunk[1 << 16];
    const size_t n = in_.read(chunk, sizeof chunk);
    if (n == 0) eof_ = true;
    buf_.append(chunk, n);
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  line_no_++;
  return true;
}

// ----------------------------------------------------------------------------
// UTF-8

namespace {

// Length of the well-formed UTF-8 sequence at p (Unicode Table 3-7), or 0 with *bad = the
// length of its maximal ill-formed prefix (at least 1).
size_t utf8_sequence(const unsigned char* p, size_t n, size_t* bad) {
  const unsigned c = p[0];
  size_t len = 0;
  unsigned lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k < len; k++) {
    if (k >= n || p[k] < lo || p[k] > hi) {
      *bad = k;
      return 0;
    }
    lo = 0x80, hi = 0xBF;
  }
  return len;
}

}  // namespace

size_t utf8_length_at(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (p[0] < 0x80) return 1;
  size_t bad = 0;
  return utf8_sequence(p, s.size() - i, &bad);
}

int64_t utf8_repair(std::string& s, size_t* first) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  std::string out;  // only built once an invalid byte is found
  int64_t invalid = 0;
  size_t copied = 0;  // s[0, copied) is in out
  for (size_t i = 0; i < n;) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    size_t bad = 0;
    const size_t len = utf8_sequence(p + i, n - i, &bad);
    if (len > 0) {
      i += len;
      continue;
    }
    if (invalid == 0) {
      if (first) *first = i;
      out.reserve(n + 16);
    }
    out.append(s, copied, i - copied);
    out += "\xEF\xBF\xBD";  // U+FFFD
    invalid += int64_t(bad);
    i += bad;
    copied = i;
  }
  if (invalid > 0) {
    out.append(s, copied, n - copied);
    s = std::move(out);
  }
  return invalid;
}

// ----------------------------------------------------------------------------
// corpora

std::vector<std::string> corpus_files(const CorpusSpec& spec) {
  std::vector<std::string> out;
  for (const std::string& p : spec.paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> files;
      for (auto it = fs::recursive_directory_iterator(p, ec);
           it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) fail(fmt::format("{}: cannot list ({})", p, ec.message()));
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) files.push_back(it->path().string());
      }
      std::sort(files.begin(), files.end());
      out.insert(out.end(), files.begin(), files.end());
    } else if (fs::is_regular_file(p, ec)) {
      out.push_back(p);
    } else {
      fail(fmt::format("{}: no such file or folder", p));
    }
  }
  return out;
}

namespace {

bool is_jsonl(const std::string& path, CorpusFormat f) {
  if (f != CorpusFormat::Auto) return f == CorpusFormat::Jsonl;
  std::string p = path;
  for (const char* z : {".gz", ".zst"})
    if (ends_with(p, z)) p.resize(p.size() - std::strlen(z));
  return ends_with(p, ".jsonl") || ends_with(p, ".json");
}

void problem(CorpusReport& r, const std::string& where, const std::string& why) {
  r.malformed++;
  if (r.problems.size() < CorpusReport::kMaxProblems) r.problems.push_back(where + ": " + why);
}

// The invalid UTF-8 of one file: counted, the first place remembered, and the file refused when
// it is mostly not text (random bytes, UTF-16, a binary file in a folder of text).
struct Utf8Tally {
  const std::string& file;
  int64_t bytes = 0, invalid = 0;
  std::string first;  // where the first invalid byte is

  // text: a whole file (line 0) or one line of it; repaired in place.
  void add(std::string& text, int64_t line) {
    bytes += int64_t(text.size());
    size_t at = 0;
    const int64_t n = utf8_repair(text, &at);
    if (n > 0 && invalid == 0)
      first = line > 0 ? fmt::format("line {}, byte {}", line, at) : fmt::format("byte {}", at);
    invalid += n;
  }
  void finish(CorpusReport& r) const {
    if (invalid == 0) return;
    if (double(invalid) > kMaxInvalidUtf8Fraction * double(bytes))
      fail(fmt::format("{}: not UTF-8 text ({} of {} bytes are not valid UTF-8, the first at {})",
                       file, invalid, bytes, first));
    r.invalid_utf8_bytes += invalid;
    if (r.invalid_utf8.size() < CorpusReport::kMaxProblems)
      r.invalid_utf8.push_back(
          fmt::format("{}: {} bytes not valid UTF-8 replaced by U+FFFD, the first at {}", file,
                      invalid, first));
  }
};

void read_jsonl(const std::string& file, const CorpusSpec& spec,
                const std::function<void(std::string_view)>& on_document, CorpusReport& report) {
  Utf8Tally utf8{file};
  LineReader lines(file);
  std::string line;
  while (lines.next(line)) {
    // Repaired before parsing: the JSON parser refuses ill-formed UTF-8, and a stray Latin-1
    // byte in a record is damage to count, not a reason to lose the record.
    utf8.add(line, lines.line_number());
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank: not a document
    const std::string where = fmt::format("{}:{}", file, lines.line_number());
    if (line.find('\0') != std::string::npos) {  // binary damage in one record, not the file
      problem(report, where, "a NUL byte (not text)");
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      problem(report, where, "not valid JSON");
      continue;
    }
    if (!j.is_object()) {
      problem(report, where, "not a JSON object");
      continue;
    }
    auto it = j.find(spec.text_field);
    if (it == j.end()) {
      problem(report, where, fmt::format("no \"{}\" field", spec.text_field));
      continue;
    }
    if (!it->is_string()) {
      problem(report, where, fmt::format("\"{}\" is not a string", spec.text_field));
      continue;
    }
    const std::string& text = it->get_ref<const std::string&>();
    report.bytes += int64_t(text.size());
    report.documents++;
    on_document(text);
  }
  utf8.finish(report);
}

}  // namespace

void corpus_read(const CorpusSpec& spec, const std::function<void(std::string_view)>& on_document,
                 CorpusReport& report) {
  for (const std::string& file : corpus_files(spec)) {
    report.files++;
    if (is_jsonl(file, spec.format)) {
      read_jsonl(file, spec, on_document, report);
      continue;
    }
    std::string text = ByteReader(file).read_all();
    report.bytes += int64_t(text.size());
    if (const size_t nul = text.find('\0'); nul != std::string::npos)
      fail(fmt::format("{}: not a text file (a NUL byte at byte {})", file, nul));
    Utf8Tally utf8{file};
    utf8.add(text, 0);
    utf8.finish(report);
    if (text.empty()) continue;
    report.documents++;
    on_document(text);
  }
}

}  // namespace moelab
