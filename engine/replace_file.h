#pragma once
// Files written whole or not at all: exports, their config.json, --simulate --out.
#include <functional>
#include <ostream>
#include <stdexcept>
#include <string>

namespace mics {

// One sentence naming the file.
struct FileWriteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Writes `path` through a temporary file beside it, forced to disk and renamed into place,
// so that no reader, and no crash, leaves half a file. A `path` that exists and is not a
// regular file (a device, a fifo, a folder) is refused rather than replaced; a symbolic
// link's file is replaced, the link kept; a failed write (a full disk) or rename removes the
// temporary file.
void write_file_replacing(const std::string& path, const std::function<void(std::ostream&)>& write);
// Forces a directory's entries (a rename into it) to disk; "" is the current directory.
void sync_directory(const std::string& dir);

}  // namespace mics
