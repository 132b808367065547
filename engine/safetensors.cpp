#include "engine/safetensors.h"

#include "engine/replace_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace mics {

using nlohmann::json;

namespace {
constexpr uint64_t kMaxHeader = 100u << 20;  // as the reference implementation

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

void write_safetensors(const std::string& path, const TensorFile& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (static_cast<int64_t>(t.values.size()) != numel(t.shape))
      throw SafetensorsError("tensor " + name + " has " + std::to_string(t.values.size()) + " values for its shape.");
    const uint64_t bytes = t.values.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_replacing(path, [&](std::ostream& out) {
    const uint64_t size = text.size();  // little endian on every supported host
    out.write(reinterpret_cast<const char*>(&size), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : tensors)
      out.write(reinterpret_cast<const char*>(t.values.data()), static_cast<std::streamsize>(t.values.size() * sizeof(float)));
  });
}

TensorFile read_safetensors(const std::string& path, const std::set<std::string>& skip) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SafetensorsError("cannot read " + path + ".");
  const uint64_t file_size = std::filesystem::file_size(path);
  uint64_t header_size = 0;
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(&header_size), 8))
    throw SafetensorsError(path + " is too short to be a safetensors file.");
  if (header_size > kMaxHeader || header_size > file_size - 8)
    throw SafetensorsError(path + ": header length " + std::to_string(header_size) + " does not fit the file.");
  std::string text(header_size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_size));
  const json header = json::parse(text, nullptr, false);
  if (header.is_discarded() || !header.is_object()) throw SafetensorsError(path + ": the header is not a JSON object.");
  const uint64_t data_size = file_size - 8 - header_size;

  TensorFile out;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = path + ": tensor '" + it.key() + "'";
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets") ||
        e.size() != 3)
      throw SafetensorsError(where + " needs exactly dtype, shape and data_offsets.");
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw SafetensorsError(where + " has malformed data_offsets.");
    if (skip.count(it.key())) {
      if (off[1].get<uint64_t>() > data_size || off[0].get<uint64_t>() > off[1].get<uint64_t>())
        throw SafetensorsError(where + " lies outside the file.");
      spans.emplace_back(off[0].get<uint64_t>(), off[1].get<uint64_t>());
      continue;
    }
    if (e["dtype"] != "F32") throw SafetensorsError(where + " is " + e["dtype"].dump() + "; only F32 is supported.");
    StoredTensor t;
    if (!e["shape"].is_array()) throw SafetensorsError(where + " has a malformed shape.");
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned()) throw SafetensorsError(where + " has a malformed shape.");
      t.shape.push_back(d.get<int64_t>());
    }
    const uint64_t b = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (b > end || end > data_size || end - b != static_cast<uint64_t>(numel(t.shape)) * sizeof(float))
      throw SafetensorsError(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(end) +
                             "] do not match its shape within " + std::to_string(data_size) + " data bytes.");
    spans.emplace_back(b, end);
    t.values.resize(static_cast<size_t>(numel(t.shape)));
    in.seekg(static_cast<std::streamoff>(8 + header_size + b));
    if (!in.read(reinterpret_cast<char*>(t.values.data()), static_cast<std::streamsize>(end - b)))
      throw SafetensorsError(where + " is truncated.");
    out.emplace(it.key(), std::move(t));
  }
  // The tensors must tile the data region: no gaps, no overlaps, nothing left over.
  std::sort(spans.begin(), spans.end());
  uint64_t cursor = 0;
  for (const auto& [b, e] : spans) {
    if (b != cursor) throw SafetensorsError(path + ": tensor data overlaps or leaves a gap at byte " + std::to_string(cursor) + ".");
    cursor = e;
  }
  if (cursor != data_size) throw SafetensorsError(path + ": " + std::to_string(data_size - cursor) + " bytes after the last tensor.");
  return out;
}

}  // namespace mics
