#include "data/shard_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include "data/data_source.h"

namespace mics::data {
namespace {

std::string message(int err) { return std::error_code(err, std::generic_category()).message(); }

}  // namespace

ShardFile::ShardFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw DataError("cannot open shard '" + path_ + "': " + message(errno) + ".");
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw DataError("cannot stat shard '" + path_ + "': " + message(err) + ".");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw DataError("shard '" + path_ + "' is not a regular file.");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

ShardFile::ShardFile(ShardFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), size_(other.size_) {}

ShardFile& ShardFile::operator=(ShardFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
  }
  return *this;
}

ShardFile::~ShardFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ShardFile::read_at(uint64_t offset, void* dst, size_t bytes) const {
  auto* out = static_cast<std::byte*>(dst);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, out + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw DataError("reading shard '" + path_ + "' at byte " + std::to_string(offset + done) + " failed: " +
                      message(errno) + ".");
    if (n == 0) {
      struct stat st {};
      const std::string now = ::fstat(fd_, &st) == 0 ? std::to_string(st.st_size) + " bytes" : "shorter";
      throw DataError("shard '" + path_ + "' is now " + now + ", but it had " + std::to_string(size_) +
                      " bytes when training started: it was truncated or rewritten during the run; restore it, "
                      "or resume on data that no one writes to.");
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace mics::data
