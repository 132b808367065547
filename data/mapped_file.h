#pragma once
// A read-only memory mapping of a whole file; shards can be far larger than RAM, so the
// page cache, not the heap, holds their tokens.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>
#include <system_error>
#include <utility>

#include "data/data_source.h"

namespace mics::data {

class MappedFile {
 public:
  // Throws DataError naming `path` when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, "cannot open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail(path, "cannot stat", err);
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {  // mmap rejects length 0; an empty file is reported by the caller's checks
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      if (p == MAP_FAILED) fail(path, "cannot mmap", err);
      data_ = static_cast<const std::byte*>(p);
    } else {
      ::close(fd);
    }
  }
  MappedFile(MappedFile&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      unmap();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { unmap(); }

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  [[noreturn]] static void fail(const std::string& path, const char* what, int err = errno) {
    throw DataError(std::string(what) + " shard '" + path + "': " +
                    std::error_code(err, std::generic_category()).message() + ".");
  }
  void unmap() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mics::data
