#pragma once
// One shard, read with pread(2) rather than mapped. Shards can be far larger than RAM and
// the page cache holds their tokens either way; but a shard truncated while training (a
// preprocessing job rewriting it in place) kills a mapping's reader with SIGBUS, where a
// read comes back short and is reported as a DataError naming the file. A window is a few
// KiB, so one system call per read costs nothing measurable.
#include <cstddef>
#include <cstdint>
#include <string>

namespace mics::data {

class ShardFile {
 public:
  // Throws DataError naming `path` when it cannot be opened or is not a regular file.
  explicit ShardFile(std::string path);
  ShardFile(ShardFile&& other) noexcept;
  ShardFile& operator=(ShardFile&& other) noexcept;
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;
  ~ShardFile();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }  // when opened
  // Reads `bytes` at `offset` into `dst`; throws DataError naming the file when fewer come
  // back (it shrank since it was opened) or the read fails.
  void read_at(uint64_t offset, void* dst, size_t bytes) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace mics::data
