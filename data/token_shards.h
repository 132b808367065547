#pragma once
// Pre-tokenized shards in llm.c's .bin format: a 256 x int32 little-endian header
// (magic 20240520, version 1, token count) followed by that many uint16 tokens.
// Files are read with pread (data/shard_file.h), and all shards form one stream in sorted
// path order, so windows may straddle a shard boundary.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/data_source.h"
#include "data/shard_file.h"
#include "data/window_order.h"

namespace mics::data {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

class TokenShardSource final : public TokenSource {
 public:
  // `path` is a .bin file, a directory (all *.bin under it) or a glob. Every shard is
  // validated and scanned for its largest token; throws DataError naming the bad file.
  TokenShardSource(const std::string& path, int window_len, uint64_t seed, bool shuffle);
  void window(int64_t index, std::span<int32_t> out) const override;
  int32_t vocab_bound() const override { return shards_.vocab_bound; }
  std::string describe() const override;
  std::string identity() const override;
  int64_t num_windows() const override { return order_.num_windows(); }
  int64_t num_tokens() const { return shards_.starts.back(); }

 private:
  struct Shards {
    std::vector<ShardFile> files;
    std::vector<int64_t> starts;  // stream offset of each shard's first token, plus the total
    int32_t vocab_bound = 0;
    std::string content;  // ContentHash of the token stream
  };
  static Shards load(const std::string& path);

  std::string path_;
  int window_len_;
  Shards shards_;
  WindowOrder order_;
};

}  // namespace mics::data
