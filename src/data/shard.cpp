#include "data/shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "core/error.hpp"

// Header-only use of Debian's libxxhash: nothing to link. GCC 12 sees uninitialised vector
// variables in its AVX-512 intrinsics (a false positive inside the system headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define XXH_INLINE_ALL
#include <xxhash.h>
#pragma GCC diagnostic pop

namespace moelab {

// ----------------------------------------------------------------------------
// checksum

namespace {

struct XxhState {
  XXH3_state_t* s = XXH3_createState();
  XxhState() {
    if (!s) throw std::bad_alloc();
    XXH3_64bits_reset(s);
  }
  ~XxhState() { XXH3_freeState(s); }
  XxhState(const XxhState&) = delete;
  XxhState& operator=(const XxhState&) = delete;
  void update(const void* p, size_t n) { XXH3_64bits_update(s, p, n); }
  // The header goes last: its counts are only known when the tokens are written.
  uint64_t finish(ShardHeader h) {
    h.checksum = 0;
    update(&h, sizeof h);
    return XXH3_64bits_digest(s);
  }
};

}  // namespace

uint64_t shard_checksum(const ShardHeader& header, std::span<const uint8_t> tokens) {
  XxhState h;
  h.update(tokens.data(), tokens.size());
  return h.finish(header);
}

struct ShardWriter::Hash : XxhState {};

// ----------------------------------------------------------------------------
// writing

ShardWriter::ShardWriter(std::string path, uint64_t vocab_size, uint64_t fingerprint)
    : path_(std::move(path)), tmp_(path_ + ".tmp") {
  if (vocab_size == 0 || vocab_size > (uint64_t(1) << 31))
    fail(fmt::format("{}: vocabulary size {} out of range", path_, vocab_size));
  std::memcpy(header_.magic, kShardMagic, 8);
  header_.version = kShardVersion;
  header_.token_bytes = vocab_size <= 65536 ? 2 : 4;
  header_.vocab_size = vocab_size;
  header_.tokenizer_fingerprint = fingerprint;
  hash_ = std::make_unique<Hash>();
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd_ < 0) fail(fmt::format("{}: cannot write ({})", path_, std::strerror(errno)));
  put(&header_, sizeof header_);  // rewritten with the counts by close()
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void ShardWriter::put(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, n);
    if (w <= 0) fail(fmt::format("{}: write failed ({})", path_, std::strerror(errno)));
    c += w;
    n -= size_t(w);
  }
}

void ShardWriter::append_document(std::span<const int32_t> tokens) {
  if (fd_ < 0) fail(path_ + ": shard already closed");
  if (header_.token_bytes == 2) {
    std::vector<uint16_t> buf(tokens.size());
    for (size_t i = 0; i < tokens.size(); i++) {
      if (tokens[i] < 0 || uint64_t(tokens[i]) >= header_.vocab_size)
        fail(fmt::format("{}: token {} outside the vocabulary of {}", path_, tokens[i],
                         header_.vocab_size));
      buf[i] = uint16_t(tokens[i]);
    }
    hash_->update(buf.data(), buf.size() * 2);
    put(buf.data(), buf.size() * 2);
  } else {
    for (int32_t t : tokens)
      if (t < 0 || uint64_t(t) >= header_.vocab_size)
        fail(
            fmt::format("{}: token {} outside the vocabulary of {}", path_, t, header_.vocab_size));
    hash_->update(tokens.data(), tokens.size() * 4);
    put(tokens.data(), tokens.size() * 4);
  }
  header_.n_tokens += tokens.size();
  header_.n_documents += 1;
}

void ShardWriter::close() {
  if (fd_ < 0) return;
  header_.checksum = hash_->finish(header_);
  if (::pwrite(fd_, &header_, sizeof header_, 0) != ssize_t(sizeof header_) || ::fsync(fd_) != 0)
    fail(fmt::format("{}: write failed ({})", path_, std::strerror(errno)));
  ::close(fd_);
  fd_ = -1;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    ::unlink(tmp_.c_str());
    fail(fmt::format("{}: rename failed ({})", path_, std::strerror(errno)));
  }
}

// ----------------------------------------------------------------------------
// reading

namespace {

// Files whose checksum this process has verified, by identity, size and modification time.
std::mutex verified_mutex;
std::set<std::tuple<dev_t, ino_t, off_t, int64_t, int64_t>> verified_files;

std::tuple<dev_t, ino_t, off_t, int64_t, int64_t> file_identity(const struct stat& st) {
  return {st.st_dev, st.st_ino, st.st_size, int64_t(st.st_mtim.tv_sec),
          int64_t(st.st_mtim.tv_nsec)};
}

// Why a header cannot describe a file of `size` bytes, or "" when it can.
std::string header_problem(const ShardHeader& h, uint64_t size) {
  if (std::memcmp(h.magic, kShardMagic, 8) != 0) return "not a token shard (bad magic)";
  if (h.version < kShardMinVersion || h.version > kShardVersion)
    return fmt::format("shard format version {}, this moelab reads versions {} to {}", h.version,
                       kShardMinVersion, kShardVersion);
  if (h.token_bytes != 2 && h.token_bytes != 4)
    return fmt::format("bad token width {} bytes", h.token_bytes);
  if (h.vocab_size == 0 || h.vocab_size > (uint64_t(1) << 31) ||
      (h.token_bytes == 2 && h.vocab_size > 65536))
    return fmt::format("vocabulary size {} impossible for {}-byte tokens", h.vocab_size,
                       h.token_bytes);
  // Compared by division: a huge count must not wrap around to the file's size.
  const uint64_t body = size - sizeof(ShardHeader);
  if (body % h.token_bytes != 0 || body / h.token_bytes != h.n_tokens)
    return fmt::format(
        "truncated or padded: the header says {} tokens ({} bytes with the header), the file "
        "has {} bytes",
        h.n_tokens,
        h.n_tokens <= body ? std::to_string(sizeof(ShardHeader) + h.n_tokens * h.token_bytes)
                           : std::string("more than"),
        size);
  if (h.n_documents > h.n_tokens)
    return fmt::format("the header says {} documents in {} tokens", h.n_documents, h.n_tokens);
  if (h.version < 2 && h.checksum != 0) return "version 1 with a checksum field that is not zero";
  return "";
}

}  // namespace

Shard::Shard(const std::string& path, std::optional<uint64_t> expected, ShardCheck check)
    : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(fmt::format("{}: not a regular file", path));
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < sizeof(ShardHeader)) {
    ::close(fd);
    fail(fmt::format("{}: not a token shard (only {} bytes)", path, size));
  }
  map_ = static_cast<const uint8_t*>(::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0));
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(fmt::format("{}: cannot map ({})", path, std::strerror(errno)));
  }
  map_size_ = size;
  std::memcpy(&header_, map_, sizeof header_);
  auto bad = [&](const std::string& why) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    map_ = nullptr;
    fail(fmt::format("{}: {}", path, why));
  };
  if (const std::string why = header_problem(header_, size); !why.empty()) bad(why);
  if (expected && *expected != header_.tokenizer_fingerprint)
    bad(fmt::format("tokenizer fingerprint {:016x} does not match the tokenizer in use ({:016x})",
                    header_.tokenizer_fingerprint, *expected));
  if (check == ShardCheck::Checksum && has_checksum()) {
    const auto id = file_identity(st);
    {
      std::lock_guard lock(verified_mutex);
      if (verified_files.count(id)) return;
    }
    try {
      verify_checksum();
    } catch (const Error&) {
      ::munmap(const_cast<uint8_t*>(map_), map_size_);
      map_ = nullptr;
      throw;
    }
    std::lock_guard lock(verified_mutex);
    verified_files.insert(id);
  }
}

Shard::Shard(Shard&& o) noexcept
    : path_(std::move(o.path_)), header_(o.header_), map_(o.map_), map_size_(o.map_size_) {
  o.map_ = nullptr;
}

Shard::~Shard() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

void Shard::verify_checksum() const {
  if (!has_checksum()) return;
  const uint64_t got =
      shard_checksum(header_, {map_ + sizeof(ShardHeader), map_size_ - sizeof(ShardHeader)});
  if (got != header_.checksum)
    fail(
        fmt::format("{}: checksum mismatch (the header says {:016x}, the contents hash to "
                    "{:016x}): the file is damaged",
                    path_, header_.checksum, got));
}

int32_t Shard::at(uint64_t i) const {
  check(i < header_.n_tokens, "shard index out of range");
  const uint8_t* p = map_ + sizeof(ShardHeader) + i * header_.token_bytes;
  if (header_.token_bytes == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return int32_t(v);
  }
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void Shard::copy(int32_t* dst, uint64_t begin, uint64_t n) const {
  check(begin <= header_.n_tokens && n <= header_.n_tokens - begin, "shard range out of bounds");
  if (n == 0) return;  // dst may be null then, and memcpy's pointers must not be, even for 0 bytes
  const uint8_t* p = map_ + sizeof(ShardHeader) + begin * header_.token_bytes;
  // Unsigned compare: a negative 32-bit id is out of range too. One pass that converts and
  // checks: the check costs nothing next to the model that reads the tokens.
  const uint64_t vocab = header_.vocab_size;
  bool ok = true;
  if (header_.token_bytes == 4) {
    std::memcpy(dst, p, n * 4);
    for (uint64_t i = 0; i < n; i++) ok &= uint32_t(dst[i]) < vocab;
  } else {
    for (uint64_t i = 0; i < n; i++) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      dst[i] = int32_t(v);
      ok &= v < vocab;
    }
  }
  if (ok) return;
  for (uint64_t i = 0; i < n; i++)
    if (uint32_t(dst[i]) >= vocab)
      fail(fmt::format("{}: token {} is {}, outside the vocabulary of {}: the file is damaged",
                       path_, begin + i, int64_t(uint32_t(dst[i])), vocab));
}

namespace {

// Fixed-width loop, so that the compiler vectorises the compare.
template <typename T>
void scan_ids(const uint8_t* p, uint64_t n, uint64_t vocab, Shard::BadTokens& b) {
  constexpr uint64_t kBlock = 1 << 16;
  for (uint64_t at = 0; at < n; at += kBlock) {
    const uint64_t m = std::min(kBlock, n - at);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < m; i++) {
      T v;
      std::memcpy(&v, p + (at + i) * sizeof(T), sizeof(T));
      bad += uint64_t(v) >= vocab;
    }
    if (bad == 0) continue;
    for (uint64_t i = 0; i < m; i++) {
      T v;
      std::memcpy(&v, p + (at + i) * sizeof(T), sizeof(T));
      if (uint64_t(v) >= vocab && b.count++ == 0) b.first = at + i, b.first_id = int64_t(v);
    }
  }
}

}  // namespace

Shard::BadTokens Shard::tokens_outside_vocab() const {
  BadTokens b;
  const uint8_t* p = map_ + sizeof(ShardHeader);
  if (header_.token_bytes == 2)
    scan_ids<uint16_t>(p, header_.n_tokens, header_.vocab_size, b);
  else
    scan_ids<uint32_t>(p, header_.n_tokens, header_.vocab_size, b);
  return b;
}

}  // namespace moelab
