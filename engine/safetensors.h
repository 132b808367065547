#pragma once
// A small reader and writer of the safetensors format: an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then
// the raw little-endian tensor bytes. Only F32 tensors are read and written. Reading is
// strict: any inconsistency is a SafetensorsError naming the file and the tensor.
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace mics {

struct SafetensorsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct StoredTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

using TensorFile = std::map<std::string, StoredTensor>;

// Writes the tensors in name order, header padded to 8 bytes; replaces `path` atomically
// (write_file_replacing).
void write_safetensors(const std::string& path, const TensorFile& tensors,
                       const std::map<std::string, std::string>& metadata);
// `skip`: names whose data is checked for its place in the file but not loaded (buffers
// and tied copies that other tools store, in any dtype).
TensorFile read_safetensors(const std::string& path, const std::set<std::string>& skip = {});

}  // namespace mics
