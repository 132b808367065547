#include "data/byte_text.h"

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <system_error>

#include "data/content_hash.h"
#include "data/file_set.h"
#include "data/human_format.h"

namespace mics::data {
namespace {

[[noreturn]] void unreadable(const std::string& file, int err) {
  throw DataError("cannot read text file '" + file + "': " +
                  std::error_code(err, std::generic_category()).message() + ".");
}

// Appends the whole of `file` to `bytes`.
void append_file(const std::string& file, std::vector<uint8_t>& bytes) {
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(file.c_str(), "rb"), std::fclose);
  if (!f) unreadable(file, errno);
  uint8_t buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) bytes.insert(bytes.end(), buf, buf + got);
  if (std::ferror(f.get())) unreadable(file, errno ? errno : EIO);
}

// Checked before reading so a bad configuration fails without loading the corpus.
int positive_window(const std::string& path, int window_len) {
  if (window_len <= 0) {
    throw DataError("text data '" + path + "' needs a positive window length, got " +
                    std::to_string(window_len) + ".");
  }
  return window_len;
}

int64_t count_windows(const std::string& path, size_t num_bytes, int window_len) {
  if (num_bytes < static_cast<size_t>(window_len)) {
    throw DataError("text data '" + path + "' has " + std::to_string(num_bytes) +
                    " tokens, fewer than the " + std::to_string(window_len) + " needed for one window.");
  }
  return static_cast<int64_t>(num_bytes / static_cast<size_t>(window_len));
}

}  // namespace

ByteTextSource::Text ByteTextSource::read_text(const std::string& path) {
  const std::vector<std::string> files = resolve_files(path, "text");
  // Reserving the summed sizes up front avoids repeated regrowth of a multi-GB buffer.
  uintmax_t expected = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    const uintmax_t size = std::filesystem::file_size(f, ec);
    if (!ec) expected += size;
  }
  Text text;
  text.bytes.reserve(static_cast<size_t>(expected));
  for (const std::string& f : files) {
    const size_t before = text.bytes.size();
    append_file(f, text.bytes);
    if (text.bytes.size() > before) ++text.num_files;
  }
  if (text.bytes.empty()) {
    // Empty files are skipped inside a directory or glob, but a set with nothing to read is useless.
    if (files.size() == 1 && files.front() == path) throw DataError("text file '" + path + "' is empty.");
    throw DataError("text data '" + path + "' contains only empty files.");
  }
  ContentHash content;
  content.add(text.bytes.data(), text.bytes.size());
  text.content = content.hex();
  return text;
}

ByteTextSource::ByteTextSource(const std::string& path, int window_len, uint64_t seed, bool shuffle)
    : path_(path),
      window_len_(positive_window(path, window_len)),
      text_(read_text(path)),
      order_(count_windows(path, text_.bytes.size(), window_len), seed, shuffle) {}

void ByteTextSource::window(int64_t index, std::span<int32_t> out) const {
  if (out.size() != static_cast<size_t>(window_len_)) {
    throw std::invalid_argument("text window: output size differs from the window length");
  }
  const size_t start = static_cast<size_t>(order_.window_of(index)) * out.size();
  const uint8_t* src = text_.bytes.data() + start;
  for (size_t p = 0; p < out.size(); ++p) out[p] = src[p];
}

std::string ByteTextSource::describe() const {
  return "text '" + path_ + "': " + std::to_string(text_.num_files) + " files, " +
         human_count(text_.bytes.size(), "B") + ", " + human_count(static_cast<uint64_t>(num_windows())) +
         " windows of " + std::to_string(window_len_) + " tokens";
}

std::string ByteTextSource::identity() const {
  return "text '" + path_ + "': " + std::to_string(text_.num_files) + " files, " + std::to_string(text_.bytes.size()) +
         " bytes, " + std::to_string(num_windows()) + " windows of " + std::to_string(window_len_) + " tokens, content " +
         text_.content;
}

}  // namespace mics::data
