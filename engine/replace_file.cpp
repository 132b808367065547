#include "engine/replace_file.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace mics {

void write_file_replacing(const std::string& path, const std::function<void(std::ostream&)>& write) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status target = fs::status(path, ec);  // a link is judged by what it points at
  if (fs::exists(target) && !fs::is_regular_file(target))
    throw FileWriteError(path + " exists and is not a regular file; it is not replaced.");
  const std::string tmp = path + ".tmp";
  errno = 0;
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) throw FileWriteError("cannot create " + tmp + (errno ? std::string(": ") + std::strerror(errno) : "") + ".");
  write(out);
  out.close();  // the last buffered bytes reach the file (or fail to) here
  if (!out) {
    const int error = errno;
    fs::remove(tmp, ec);
    throw FileWriteError("writing " + path + " failed" + (error ? std::string(": ") + std::strerror(error) : "") + ".");
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw FileWriteError("cannot replace " + path + ": " + why + ".");
  }
}

}  // namespace mics
