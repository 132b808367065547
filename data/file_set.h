#pragma once
// Resolves a data path (a file, a directory searched recursively, or a glob) into the
// sorted list of files it names. Sorting by path string makes the token stream identical
// on every machine whatever order the filesystem lists entries in.
#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "data/data_source.h"

namespace mics::data {

namespace file_set_detail {

// Appends the regular files under `dir` whose names end in `extension` ("" for all).
inline void add_directory(const std::filesystem::path& dir, std::string_view extension,
                          std::vector<std::string>& files) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec) || ec) continue;
    const std::string name = it->path().string();
    if (extension.empty() || it->path().extension() == extension) files.push_back(name);
  }
  if (ec) throw DataError("cannot list directory '" + dir.string() + "': " + ec.message() + ".");
}

inline bool has_glob_chars(std::string_view path) {
  return path.find_first_of("*?[") != std::string_view::npos;
}

}  // namespace file_set_detail

// `what` names the data kind in messages ("text", "shard"); directories contribute only
// files ending in `extension` (all files when empty). Throws DataError naming `path`.
inline std::vector<std::string> resolve_files(const std::string& path, std::string_view what,
                                              std::string_view extension = {}) {
  namespace fs = std::filesystem;
  const std::string quoted = std::string(what) + " path '" + path + "'";
  if (path.empty()) throw DataError(std::string(what) + " data needs a path, but none was given.");
  std::vector<std::string> files;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (fs::is_directory(st)) {
    file_set_detail::add_directory(path, extension, files);
    if (files.empty()) {
      throw DataError(quoted + " is a directory with no " +
                      (extension.empty() ? std::string("files") : "*" + std::string(extension) + " files") +
                      " under it.");
    }
  } else if (fs::is_regular_file(st)) {
    files.push_back(path);
  } else if (fs::exists(st)) {  // a fifo or device would block or never end
    throw DataError(quoted + " is not a regular file or a directory.");
  } else if (file_set_detail::has_glob_chars(path)) {
    glob_t g{};
    const int rc = ::glob(path.c_str(), 0, nullptr, &g);
    const std::unique_ptr<glob_t, void (*)(glob_t*)> guard(&g, ::globfree);
    if (rc == GLOB_NOMATCH) throw DataError(std::string(what) + " glob '" + path + "' matches no files.");
    if (rc == GLOB_NOSPACE) throw std::bad_alloc();
    if (rc != 0) throw DataError(std::string(what) + " glob '" + path + "' could not be expanded (read error).");
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      const fs::path match = g.gl_pathv[i];
      if (fs::is_directory(match, ec)) {
        file_set_detail::add_directory(match, extension, files);
      } else if (fs::is_regular_file(match, ec)) {
        files.push_back(match.string());
      } else {
        throw DataError(std::string(what) + " glob '" + path + "' matches '" + match.string() +
                        "', which is not a regular file or a directory.");
      }
    }
    if (files.empty()) throw DataError(std::string(what) + " glob '" + path + "' matches no files.");
  } else if (ec && st.type() != fs::file_type::not_found) {
    throw DataError(quoted + " cannot be accessed: " + ec.message() + ".");
  } else {
    throw DataError(quoted + " does not exist.");
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

}  // namespace mics::data
