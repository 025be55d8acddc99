#pragma once
// Token shards: a fixed 64-byte header (magic, format version, token width, vocabulary size,
// tokenizer fingerprint, token and document counts, checksum) followed by the tokens,
// little-endian. Written to a temporary name and renamed after fsync; opened by memory-mapping,
// with every header field checked against the file and the checksum against the contents.
//
// Version 2 adds the checksum: XXH3-64 of the token bytes followed by the 64-byte header with
// the checksum field zeroed, so that a flipped bit anywhere in the file is found and the file
// named. Version 1 (no checksum, those bytes zero) is still read.
#include <cstdint>
#include <memory>
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
  uint64_t checksum;  // version 2; 0 in version 1
  uint8_t reserved[8];
};
static_assert(sizeof(ShardHeader) == 64);

inline constexpr char kShardMagic[8] = {'M', 'L', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr uint32_t kShardVersion = 2;     // written
inline constexpr uint32_t kShardMinVersion = 1;  // oldest read

// The version-2 checksum of a header (its checksum field ignored) and its token bytes.
uint64_t shard_checksum(const ShardHeader& header, std::span<const uint8_t> tokens);

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
  struct Hash;  // the running checksum of the tokens
  std::unique_ptr<Hash> hash_;
};

// What opening a shard checks beyond its header and size: Checksum also hashes the contents
// (once per file and process: the training and validation loaders share shards). Hashing runs
// at several GB/s, cheap next to any training run, so that is the default.
enum class ShardCheck { Header, Checksum };

class Shard {
 public:
  // Fails with one line naming the file on a wrong magic, version, width or vocabulary size, a
  // size that does not match the header, (when given) a tokenizer fingerprint that does not
  // match, or (ShardCheck::Checksum) a checksum that does not match the contents.
  explicit Shard(const std::string& path,
                 std::optional<uint64_t> expected_fingerprint = std::nullopt,
                 ShardCheck check = ShardCheck::Checksum);
  ~Shard();
  Shard(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  Shard& operator=(Shard&&) = delete;

  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  uint64_t size() const { return header_.n_tokens; }
  bool has_checksum() const { return header_.version >= 2; }
  int32_t at(uint64_t i) const;
  // dst [n] = tokens [begin, begin + n); fails naming the file and the token's index on an id
  // outside the shard's vocabulary, so that no damaged id reaches a model.
  void copy(int32_t* dst, uint64_t begin, uint64_t n) const;

  // Hashes the contents (always, no cache) and fails naming the file on a mismatch. Version 1:
  // nothing to check.
  void verify_checksum() const;
  // Tokens whose id is not below the vocabulary size, and the index of the first.
  struct BadTokens {
    uint64_t count = 0, first = 0;
    int64_t first_id = 0;
  };
  BadTokens tokens_outside_vocab() const;

 private:
  std::string path_;
  ShardHeader header_{};
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
};

}  // namespace moelab
