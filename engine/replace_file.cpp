#include "engine/replace_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace mics {

namespace fs = std::filesystem;

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_file_replacing(const std::string& path, const std::function<void(std::ostream&)>& write) {
  std::error_code ec;
  // A link is followed: the file it names is replaced, the link stays a link.
  fs::path target = path;
  if (fs::is_symlink(fs::symlink_status(target, ec)))
    if (fs::path resolved = fs::canonical(target, ec); !ec) target = resolved;
  const fs::file_status status = fs::status(target, ec);
  if (fs::exists(status) && !fs::is_regular_file(status))
    throw FileWriteError(path + " exists and is not a regular file; it is not replaced.");

  // A name of its own beside the target (two writers of one path do not share it), on the
  // same file system so that the rename is atomic.
  std::string hidden = ".";  // (appended, not "." + name: GCC 12 warns of that falsely, -Wrestrict)
  hidden.append(target.filename().string()).append(".XXXXXX");
  std::string tmp = (target.parent_path() / hidden).string();
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw FileWriteError("cannot create a file beside " + path + ": " + std::strerror(errno) + ".");
  const mode_t mask = ::umask(0);
  ::umask(mask);
  (void)::fchmod(fd, 0666 & ~mask);  // as a file the user's own open() would make (mkstemp's is 0600)
  const auto fail = [&](const std::string& what, int error) {
    ::close(fd);
    fs::remove(tmp, ec);
    throw FileWriteError(what + (error ? std::string(": ") + std::strerror(error) : "") + ".");
  };
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write beside " + path, errno);
  write(out);
  errno = 0;
  out.close();  // the last buffered bytes reach the file (or fail to) here
  if (!out) fail("writing " + path + " failed", errno);
  if (::fsync(fd) != 0) fail("cannot flush " + path + " to disk", errno);  // on disk before the rename names it
  ::close(fd);
  fs::rename(tmp, target, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw FileWriteError("cannot replace " + path + ": " + why + ".");
  }
  sync_directory(target.parent_path().string());
}

}  // namespace mics
