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
  gzFile gz = nullptr;
  ZSTD_DCtx* zd = nullptr;
  std::vector<char> zin;
  ZSTD_inBuffer in{nullptr, 0, 0};
  bool zst_frame_open = false;
};

ByteReader::ByteReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  if (ends_with(path, ".gz")) {
    m.kind = Impl::Gzip;
    m.gz = gzopen(path.c_str(), "rb");
    if (!m.gz) fail(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
    return;
  }
  m.f = std::fopen(path.c_str(), "rb");
  if (!m.f) fail(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  if (ends_with(path, ".zst")) {
    m.kind = Impl::Zstd;
    m.zd = ZSTD_createDCtx();
    m.zin.resize(ZSTD_DStreamInSize());
  }
}

ByteReader::~ByteReader() {
  if (impl_->f) std::fclose(impl_->f);
  if (impl_->gz) gzclose(impl_->gz);
  if (impl_->zd) ZSTD_freeDCtx(impl_->zd);
}

size_t ByteReader::read(char* dst, size_t n) {
  Impl& m = *impl_;
  switch (m.kind) {
    case Impl::Plain:
      return std::fread(dst, 1, n, m.f);
    case Impl::Gzip: {
      const int r = gzread(m.gz, dst, unsigned(n));
      if (r < 0) fail(fmt::format("{}: corrupt gzip data", m.path));
      return size_t(r);
    }
    case Impl::Zstd: {
      ZSTD_outBuffer out{dst, n, 0};
      while (out.pos == 0) {
        if (m.in.pos == m.in.size) {
          m.in = {m.zin.data(), std::fread(m.zin.data(), 1, m.zin.size(), m.f), 0};
          if (m.in.size == 0) {
            if (m.zst_frame_open) fail(fmt::format("{}: truncated zstd data", m.path));
            return 0;
          }
        }
        const size_t r = ZSTD_decompressStream(m.zd, &out, &m.in);
        if (ZSTD_isError(r))
          fail(fmt::format("{}: corrupt zstd data ({})", m.path, ZSTD_getErrorName(r)));
        m.zst_frame_open = r != 0;
      }
      return out.pos;
    }
  }
  return 0;
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

}  // namespace

void corpus_read(const CorpusSpec& spec, const std::function<void(std::string_view)>& on_document,
                 CorpusReport& report) {
  for (const std::string& file : corpus_files(spec)) {
    report.files++;
    if (!is_jsonl(file, spec.format)) {
      const std::string text = ByteReader(file).read_all();
      report.bytes += int64_t(text.size());
      if (text.empty()) continue;
      report.documents++;
      on_document(text);
      continue;
    }
    LineReader lines(file);
    std::string line;
    while (lines.next(line)) {
      if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank: not a document
      const std::string where = fmt::format("{}:{}", file, lines.line_number());
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
  }
}

}  // namespace moelab
