#pragma once
// The on-disk format of mics-train checkpoints, readable without a running job: the
// manifest, the shard files (a header with a checksum, then fp32 master weights, Adam m
// and v), and the weights assembled tensor by tensor. Used by resume, resharding, export
// and the fuzzers.
#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config.h"

namespace mics {

// A checkpoint that cannot be written, read or used here: one sentence naming the file.
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Writing a checkpoint failed (a full disk, a directory that cannot be made): the run
// started and failed, where a CheckpointError is a bad checkpoint handed to the run.
struct CheckpointWriteError : CheckpointError {
  using CheckpointError::CheckpointError;
};

// Fixed header in front of a shard's payload (master, Adam m, Adam v; fp32, little endian).
inline constexpr char kShardMagic[8] = {'M', 'I', 'C', 'S', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kFormatVersion = 1;
// The largest partition size a manifest may name (a damaged one must not ask for more).
inline constexpr int64_t kMaxPartitionSize = int64_t{1} << 20;

struct ShardHeader {
  char magic[8];
  uint32_t version;
  uint32_t shard_index;
  uint32_t partition_size;
  uint32_t reserved;
  uint64_t elements;  // per array
  uint64_t checksum;  // FNV-1a 64 of the payload
};
static_assert(sizeof(ShardHeader) == 40);

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 0xcbf29ce484222325ull);
std::string shard_name(int index, int p);  // "shard-00003-of-00008.bin"

using ShardArrays = std::array<std::vector<float>, 3>;  // master, Adam m, Adam v
// Reads and validates one shard file (header, size, checksum); CheckpointError names it.
ShardArrays read_shard_file(const std::filesystem::path& path, int index, int p, uint64_t elements);
// Reads dir/manifest.json and checks its structure; CheckpointError names the file.
nlohmann::json read_manifest(const std::filesystem::path& dir);

// The shard files of one checkpoint, read (and validated) on first use. Serves any run of
// elements of any tensor, whatever partition size the reader uses.
class OldShards {
 public:
  // Checks that the manifest's partition size, shard size, layer spans and tensor offsets
  // fit together (every read stays inside its shard); CheckpointError names the field.
  OldShards(std::filesystem::path dir, const nlohmann::json& manifest);
  // Elements [first, first + count) of tensor `ti` (manifest order) into out[a] for the
  // arrays a = master, Adam m, Adam v (null entries are skipped).
  void read(size_t ti, int64_t first, int64_t count, std::array<float*, 3> out);

 private:
  const ShardArrays& shard(int index);
  std::filesystem::path dir_;
  const nlohmann::json& manifest_;
  int p_ = 0;
  uint64_t elements_ = 0;
  std::vector<int64_t> numel_;  // of each tensor, manifest order
  std::map<int, ShardArrays> cache_;
};

// A checkpoint's model weights (fp32 master), tensor by tensor, with the config it was
// trained with: what `mics-train export` writes out. Reads every shard file once.
struct NamedWeights {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};
struct CheckpointWeights {
  Config config;
  std::vector<NamedWeights> tensors;  // layout order
};
CheckpointWeights read_checkpoint_weights(const std::string& dir);

}  // namespace mics
