#pragma once
// Token shards: a fixed 64-byte header (magic, format version, token width, vocabulary size,
// tokenizer fingerprint, token and document counts) followed by the tokens, little-endian.
// Written to a temporary name and renamed after fsync; opened by memory-mapping, with every
// header field checked against the file.
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace moelab {

struct ShardHeader {
  char magic[8];         // "MLTOKENS"
  uint32_t version;      // kShardVersion
  uint32_t token_bytes;  // 2 or 4
  uint64_t vocab_size;
  uint64_t tokenizer_fingerprint;
  uint64_t n_tokens;
  uint64_t n_documents;
  uint8_t reserved[16];
};
static_assert(sizeof(ShardHeader) == 64);

inline constexpr char kShardMagic[8] = {'M', 'L', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr uint32_t kShardVersion = 1;

class ShardWriter {
 public:
  // Tokens are 16-bit when the vocabulary fits, else 32-bit.
  ShardWriter(std::string path, uint64_t vocab_size, uint64_t tokenizer_fingerprint);
  ~ShardWriter();  // without close(): the temporary file is removed, nothing appears
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append_document(std::span<const int32_t> tokens);
  void close();  // header, fsync, rename

  uint64_t n_tokens() const { return header_.n_tokens; }

 private:
  void put(const void* p, size_t n);
  std::string path_, tmp_;
  int fd_ = -1;
  ShardHeader header_{};
};

class Shard {
 public:
  // Fails with one line naming the file on a wrong magic, version or width, a truncated file, or
  // (when given) a tokenizer fingerprint that does not match.
  explicit Shard(const std::string& path,
                 std::optional<uint64_t> expected_fingerprint = std::nullopt);
  ~Shard();
  Shard(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  Shard& operator=(Shard&&) = delete;

  const ShardHeader& header() const { return header_; }
  uint64_t size() const { return header_.n_tokens; }
  int32_t at(uint64_t i) const;
  // dst [n] = tokens [begin, begin + n)
  void copy(int32_t* dst, uint64_t begin, uint64_t n) const;

 private:
  std::string path_;
  ShardHeader header_{};
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
};

}  // namespace moelab
