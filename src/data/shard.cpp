#include "data/shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/error.hpp"

namespace moelab {

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
    put(buf.data(), buf.size() * 2);
  } else {
    for (int32_t t : tokens)
      if (t < 0 || uint64_t(t) >= header_.vocab_size)
        fail(
            fmt::format("{}: token {} outside the vocabulary of {}", path_, t, header_.vocab_size));
    put(tokens.data(), tokens.size() * 4);
  }
  header_.n_tokens += tokens.size();
  header_.n_documents += 1;
}

void ShardWriter::close() {
  if (fd_ < 0) return;
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

Shard::Shard(const std::string& path, std::optional<uint64_t> expected) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
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
  if (std::memcmp(header_.magic, kShardMagic, 8) != 0) bad("not a token shard (bad magic)");
  if (header_.version != kShardVersion)
    bad(fmt::format("shard format version {}, this moelab reads version {}", header_.version,
                    kShardVersion));
  if (header_.token_bytes != 2 && header_.token_bytes != 4)
    bad(fmt::format("bad token width {} bytes", header_.token_bytes));
  const uint64_t want = sizeof(ShardHeader) + header_.n_tokens * header_.token_bytes;
  if (size != want)
    bad(
        fmt::format("truncated or padded: the header says {} tokens ({} bytes), the file has {} "
                    "bytes",
                    header_.n_tokens, want, size));
  if (expected && *expected != header_.tokenizer_fingerprint)
    bad(fmt::format("tokenizer fingerprint {:016x} does not match the tokenizer in use ({:016x})",
                    header_.tokenizer_fingerprint, *expected));
}

Shard::Shard(Shard&& o) noexcept
    : path_(std::move(o.path_)), header_(o.header_), map_(o.map_), map_size_(o.map_size_) {
  o.map_ = nullptr;
}

Shard::~Shard() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
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
  check(begin + n <= header_.n_tokens, "shard range out of bounds");
  const uint8_t* p = map_ + sizeof(ShardHeader) + begin * header_.token_bytes;
  if (header_.token_bytes == 4) {
    std::memcpy(dst, p, n * 4);
    return;
  }
  for (uint64_t i = 0; i < n; i++) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    dst[i] = int32_t(v);
  }
}

}  // namespace moelab
