#pragma once
// Byte-level text: the bytes of every file named by a path, concatenated in sorted path
// order, are the token stream (token = byte value, so no tokenizer is needed).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/data_source.h"
#include "data/window_order.h"

namespace mics::data {

class ByteTextSource final : public TokenSource {
 public:
  // `path` is a file, a directory (all files under it) or a glob. Windows are the
  // non-overlapping runs of window_len bytes; throws DataError naming the file on bad input.
  ByteTextSource(const std::string& path, int window_len, uint64_t seed, bool shuffle);
  void window(int64_t index, std::span<int32_t> out) const override;
  int32_t vocab_bound() const override { return 256; }
  std::string describe() const override;
  std::string identity() const override;
  int64_t num_windows() const override { return order_.num_windows(); }

 private:
  struct Text {
    std::vector<uint8_t> bytes;
    size_t num_files = 0;  // non-empty files contributing bytes
    std::string content;   // ContentHash of the bytes
  };
  static Text read_text(const std::string& path);

  std::string path_;
  int window_len_;
  Text text_;
  WindowOrder order_;
};

}  // namespace mics::data
