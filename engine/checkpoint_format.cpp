#include "engine/checkpoint_format.h"

#include <algorithm>
#include <cstring>
#include <fstream>

namespace mics {

namespace fs = std::filesystem;
using nlohmann::json;

uint64_t fnv1a(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

std::string shard_name(int index, int p) {
  char name[48];
  std::snprintf(name, sizeof name, "shard-%05d-of-%05d.bin", index, p);
  return name;
}

ShardArrays read_shard_file(const fs::path& path, int index, int p, uint64_t elements) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError("cannot read " + path.string() + ".");
  ShardHeader h{};
  if (!in.read(reinterpret_cast<char*>(&h), sizeof h) || std::memcmp(h.magic, kShardMagic, 8) != 0 ||
      h.version != kFormatVersion)
    throw CheckpointError(path.string() + " is not a mics-train shard file.");
  if (h.elements != elements || h.shard_index != static_cast<uint32_t>(index) ||
      h.partition_size != static_cast<uint32_t>(p))
    throw CheckpointError(path.string() + " holds shard " + std::to_string(h.shard_index) + " of " +
                          std::to_string(h.partition_size) + " with " + std::to_string(h.elements) +
                          " elements; the manifest expects shard " + std::to_string(index) + " of " +
                          std::to_string(p) + " with " + std::to_string(elements) + ".");
  // The size must agree before anything is allocated from the header's word.
  const uint64_t expected = sizeof h + 3 * sizeof(float) * elements;
  if (elements > (uint64_t{1} << 40) || fs::file_size(path) != expected)
    throw CheckpointError(path.string() + " has " + std::to_string(fs::file_size(path)) + " bytes; shard " +
                          std::to_string(index) + " of " + std::to_string(elements) + " elements needs " +
                          std::to_string(expected) + ".");
  ShardArrays arrays;
  uint64_t sum = 0xcbf29ce484222325ull;
  for (auto& a : arrays) {
    a.resize(static_cast<size_t>(elements));
    if (!in.read(reinterpret_cast<char*>(a.data()), static_cast<std::streamsize>(a.size() * sizeof(float))))
      throw CheckpointError(path.string() + " is truncated.");
    sum = fnv1a(a.data(), a.size() * sizeof(float), sum);
  }
  if (in.peek() != std::char_traits<char>::eof()) throw CheckpointError(path.string() + " has bytes after its payload.");
  if (sum != h.checksum) throw CheckpointError(path.string() + " is corrupt (checksum mismatch).");
  return arrays;
}

json read_manifest(const fs::path& dir) {
  const fs::path path = dir / "manifest.json";
  std::ifstream in(path);
  if (!in) throw CheckpointError("cannot read " + path.string() + ".");
  json manifest = json::parse(in, nullptr, false);
  if (manifest.is_discarded() || !manifest.is_object() || !manifest.contains("layout") ||
      !manifest.contains("partition_size") || !manifest.contains("shard_elements"))
    throw CheckpointError(path.string() + " is not a mics-train checkpoint manifest.");
  return manifest;
}

OldShards::OldShards(fs::path dir, const json& manifest) : dir_(std::move(dir)), manifest_(manifest) {
  // Every span and offset is checked against the shard files' size before anything is
  // read: a damaged manifest would otherwise divide by zero, or read past a shard's end
  // and hand back whatever lies there as weights.
  const std::string where = (dir_ / "manifest.json").string() + ": ";
  const int64_t p = manifest.at("partition_size").get<int64_t>();
  if (p < 1 || p > kMaxPartitionSize)
    throw CheckpointError(where + "partition_size " + std::to_string(p) + " is not between 1 and " +
                          std::to_string(kMaxPartitionSize) + ".");
  const int64_t elements = manifest.at("shard_elements").get<int64_t>();
  if (elements < 0 || elements > (int64_t{1} << 40))
    throw CheckpointError(where + "shard_elements " + std::to_string(elements) + " is out of range.");
  p_ = static_cast<int>(p);
  elements_ = static_cast<uint64_t>(elements);
  const json& layers = manifest.at("layout").at("layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t begin = layers[i].at("begin").get<int64_t>(), size = layers[i].at("size").get<int64_t>();
    if (begin < 0 || size <= 0 || begin % p != 0 || size % p != 0 || begin / p > elements ||
        size / p > elements - begin / p)
      throw CheckpointError(where + "layout.layers[" + std::to_string(i) + "] (begin " + std::to_string(begin) +
                            ", size " + std::to_string(size) + ") does not split into " + std::to_string(p) +
                            " shards of shard_elements " + std::to_string(elements) + ".");
  }
  const json& tensors = manifest.at("layout").at("tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const json& t = tensors[i];
    const int64_t layer = t.at("layer").get<int64_t>(), offset = t.at("offset").get<int64_t>();
    int64_t n = 1;  // -1: no tensor a shard could hold
    for (const json& d : t.at("shape")) {
      const int64_t dim = d.get<int64_t>();
      if (dim < 0 || (dim > 0 && n > (int64_t{1} << 50) / dim)) {
        n = -1;
        break;
      }
      n *= dim;
    }
    const std::string field = where + "layout.tensors[" + std::to_string(i) + "] (" + t.at("name").dump() + ")";
    if (layer < 0 || static_cast<size_t>(layer) >= layers.size())
      throw CheckpointError(field + " names layer " + std::to_string(layer) + "; the layout has " +
                            std::to_string(layers.size()) + ".");
    const int64_t begin = layers[static_cast<size_t>(layer)].at("begin").get<int64_t>();
    const int64_t size = layers[static_cast<size_t>(layer)].at("size").get<int64_t>();
    if (n < 0 || offset < begin || offset - begin > size || n > size - (offset - begin))
      throw CheckpointError(field + " at offset " + std::to_string(offset) + " lies outside its layer's span (begin " +
                            std::to_string(begin) + ", size " + std::to_string(size) + ").");
    numel_.push_back(n);
  }
}

void OldShards::read(size_t ti, int64_t first, int64_t count, std::array<float*, 3> out) {
    if (ti >= numel_.size() || first < 0 || count < 0 || count > numel_[ti] - first)
      throw CheckpointError((dir_ / "manifest.json").string() + ": tensor " + std::to_string(ti) +
                            " is smaller than the model's.");
    const json& t = manifest_.at("layout").at("tensors").at(ti);
    const json& layer = manifest_.at("layout").at("layers").at(t.at("layer").get<size_t>());
    const int64_t begin = layer.at("begin").get<int64_t>(), chunk = layer.at("size").get<int64_t>() / p_;
    int64_t done = 0;
    while (done < count) {  // one piece per shard crossed
      const int64_t in_layer = t.at("offset").get<int64_t>() + first + done - begin;
      const int64_t s = in_layer / chunk, within = in_layer - s * chunk;
      const int64_t n = std::min(count - done, chunk - within);
      const ShardArrays& src = shard(static_cast<int>(s));
      const auto from = static_cast<std::ptrdiff_t>(begin / p_ + within);
      for (size_t a = 0; a < 3; ++a)
        if (out[a] != nullptr) std::copy_n(src[a].begin() + from, n, out[a] + done);
      done += n;
    }
}

const ShardArrays& OldShards::shard(int index) {
    auto it = cache_.find(index);
    if (it == cache_.end()) it = cache_.emplace(index, read_shard_file(dir_ / shard_name(index, p_), index, p_, elements_)).first;
    return it->second;
}

namespace {
CheckpointWeights read_weights(const std::string& where) {
  const fs::path dir = where;
  const json manifest = read_manifest(dir);
  CheckpointWeights w{parse_config(manifest.at("config"), (dir / "manifest.json").string()), {}};
  // Every shard file must exist with the size the manifest implies before any tensor is
  // allocated, so a damaged manifest cannot ask for more memory than the files hold.
  const int p = manifest.at("partition_size").get<int>();
  const uint64_t shard_elements = manifest.at("shard_elements").get<uint64_t>();
  if (p <= 0 || p > kMaxPartitionSize) throw CheckpointError((dir / "manifest.json").string() + " has an invalid partition_size.");
  for (int s = 0; s < p; ++s) {
    const fs::path f = dir / shard_name(s, p);
    std::error_code ec;
    const uint64_t bytes = fs::file_size(f, ec);
    if (ec || bytes != sizeof(ShardHeader) + 3 * sizeof(float) * shard_elements)
      throw CheckpointError(f.string() + " is missing or does not hold " + std::to_string(shard_elements) +
                            " elements per array.");
  }
  const int64_t total = static_cast<int64_t>(shard_elements) * p;
  OldShards old(dir, manifest);
  const json& tensors = manifest.at("layout").at("tensors");
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    NamedWeights t;
    t.name = tensors[ti].at("name").get<std::string>();
    for (const json& d : tensors[ti].at("shape")) t.shape.push_back(d.get<int64_t>());
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || (d > 0 && n > total / d)) throw CheckpointError("tensor " + t.name + " is larger than the checkpoint.");
      n *= d;
    }
    const int64_t offset = tensors[ti].at("offset").get<int64_t>();
    if (offset < 0 || offset + n > total) throw CheckpointError("tensor " + t.name + " lies outside the checkpoint.");
    t.values.resize(static_cast<size_t>(n));
    old.read(ti, 0, n, {t.values.data(), nullptr, nullptr});
    w.tensors.push_back(std::move(t));
  }
  return w;
}
}  // namespace

CheckpointWeights read_checkpoint_weights(const std::string& where) {
  try {
    return read_weights(where);
  } catch (const json::exception& e) {  // a manifest whose fields have the wrong types
    throw CheckpointError((fs::path(where) / "manifest.json").string() + " is malformed: " + e.what() + ".");
  }
}

}  // namespace mics
