#include "data/token_shards.h"

#include <algorithm>
#include <bit>
#include <stdexcept>

#include "data/content_hash.h"
#include "data/file_set.h"
#include "data/human_format.h"

namespace mics::data {
namespace {

// Tokens are read as they lie in the file, which is only valid on a little-endian host.
static_assert(std::endian::native == std::endian::little, "token shards are read as little-endian");

// Tokens per read of a window: 4 KiB on the stack.
constexpr size_t kReadTokens = 2048;

int positive_window(const std::string& path, int window_len) {
  if (window_len <= 0) {
    throw DataError("shard data '" + path + "' needs a positive window length, got " +
                    std::to_string(window_len) + ".");
  }
  return window_len;
}

// Validates one shard strictly and returns its token count.
int64_t validate(const ShardFile& shard) {
  const std::string name = "shard '" + shard.path() + "'";
  if (shard.size() < kShardHeaderBytes) {
    throw DataError(name + " has a truncated header: " + std::to_string(shard.size()) + " bytes, fewer than the " +
                    std::to_string(kShardHeaderBytes) + "-byte header.");
  }
  int32_t header[3];
  shard.read_at(0, header, sizeof header);
  if (header[0] != kShardMagic) {
    throw DataError(name + " has the wrong magic number: expected " + std::to_string(kShardMagic) + ", found " +
                    std::to_string(header[0]) + ".");
  }
  if (header[1] != kShardVersion) {
    throw DataError(name + " has unsupported version " + std::to_string(header[1]) + " (expected " +
                    std::to_string(kShardVersion) + ").");
  }
  if (header[2] < 0) throw DataError(name + " has a negative token count " + std::to_string(header[2]) + ".");
  const uint64_t expected = kShardHeaderBytes + 2 * static_cast<uint64_t>(header[2]);
  if (shard.size() != expected) {
    throw DataError(name + " has " + (shard.size() < expected ? "truncated tokens" : "trailing bytes") +
                    ": header promises " + std::to_string(header[2]) + " tokens (" + std::to_string(expected) +
                    " bytes) but the file has " + std::to_string(shard.size()) + " bytes.");
  }
  if (header[2] == 0) throw DataError(name + " contains zero tokens.");
  return header[2];
}

int64_t count_windows(const std::string& path, int64_t num_tokens, int window_len) {
  if (num_tokens < window_len) {
    throw DataError("shard data '" + path + "' has " + std::to_string(num_tokens) + " tokens, fewer than the " +
                    std::to_string(window_len) + " needed for one window.");
  }
  return num_tokens / window_len;
}

}  // namespace

TokenShardSource::Shards TokenShardSource::load(const std::string& path) {
  Shards shards;
  int64_t total = 0;
  uint16_t max_token = 0;
  std::vector<uint16_t> scan;  // up to 1 MiB a read
  ContentHash content;
  for (const std::string& file : resolve_files(path, "shard", ".bin")) {
    ShardFile shard(file);
    const int64_t n = validate(shard);
    // The scan reads every token once at start-up; it is what lets the engine reject
    // token ids beyond the model's vocabulary before training starts (and fingerprints
    // the data for the checkpoints).
    scan.resize(std::max(scan.size(), std::min(size_t{1} << 19, static_cast<size_t>(n))));
    for (int64_t at = 0; at < n; at += static_cast<int64_t>(scan.size())) {
      const size_t count = std::min(scan.size(), static_cast<size_t>(n - at));
      shard.read_at(kShardHeaderBytes + 2 * static_cast<uint64_t>(at), scan.data(), 2 * count);
      max_token = std::max(max_token, *std::max_element(scan.begin(), scan.begin() + static_cast<std::ptrdiff_t>(count)));
      content.add(scan.data(), 2 * count);
    }
    shards.starts.push_back(total);
    shards.files.push_back(std::move(shard));
    total += n;
  }
  shards.starts.push_back(total);
  shards.vocab_bound = static_cast<int32_t>(max_token) + 1;
  shards.content = content.hex();
  return shards;
}

TokenShardSource::TokenShardSource(const std::string& path, int window_len, uint64_t seed, bool shuffle)
    : path_(path),
      window_len_(positive_window(path, window_len)),
      shards_(load(path)),
      order_(count_windows(path, shards_.starts.back(), window_len), seed, shuffle) {}

void TokenShardSource::window(int64_t index, std::span<int32_t> out) const {
  if (out.size() != static_cast<size_t>(window_len_)) {
    throw std::invalid_argument("shard window: output size differs from the window length");
  }
  int64_t pos = order_.window_of(index) * window_len_;
  // Last shard whose first token is at or before `pos`.
  size_t shard = static_cast<size_t>(std::upper_bound(shards_.starts.begin(), shards_.starts.end(), pos) -
                                     shards_.starts.begin()) - 1;
  size_t done = 0;
  while (done < out.size()) {
    const int64_t offset = pos - shards_.starts[shard];
    const size_t take = std::min({out.size() - done, static_cast<size_t>(shards_.starts[shard + 1] - pos), kReadTokens});
    uint16_t buf[kReadTokens];
    shards_.files[shard].read_at(kShardHeaderBytes + 2 * static_cast<uint64_t>(offset), buf, 2 * take);
    std::copy_n(buf, take, out.begin() + static_cast<std::ptrdiff_t>(done));
    done += take;
    pos += static_cast<int64_t>(take);
    if (pos == shards_.starts[shard + 1]) ++shard;
  }
}

std::string TokenShardSource::describe() const {
  return "shards '" + path_ + "': " + std::to_string(shards_.files.size()) + " files, " +
         human_count(static_cast<uint64_t>(num_tokens())) + " tokens, vocab bound " +
         std::to_string(shards_.vocab_bound) + ", " + human_count(static_cast<uint64_t>(num_windows())) +
         " windows of " + std::to_string(window_len_) + " tokens";
}

std::string TokenShardSource::identity() const {
  return "shards '" + path_ + "': " + std::to_string(shards_.files.size()) + " files, " + std::to_string(num_tokens()) +
         " tokens, " + std::to_string(num_windows()) + " windows of " + std::to_string(window_len_) + " tokens, content " +
         shards_.content;
}

}  // namespace mics::data
