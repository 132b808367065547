#pragma once
// A 64-bit fingerprint of a byte stream, so that a checkpoint can tell its data from an edit
// of the same size; not cryptographic. Each 8-byte word goes through one multiply-xorshift
// step, a bijection of the state for any word and of the word for any state, so a change
// of one word always changes the value; it runs at memory speed, so sources that read every
// byte at start-up anyway (for the vocabulary check) take it in passing. The value does not
// depend on how the stream is cut into add() calls.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/counter_hash.h"

namespace mics::data {

class ContentHash {
 public:
  void add(const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    total_ += bytes;
    if (fill_ > 0) {  // first complete the word an earlier call began
      const size_t take = bytes < 8 - fill_ ? bytes : 8 - fill_;
      std::memcpy(word_ + fill_, p, take);
      fill_ += take;
      p += take;
      bytes -= take;
      if (fill_ < 8) return;
      state_ = step(state_, load(word_));
      fill_ = 0;
    }
    for (; bytes >= 8; p += 8, bytes -= 8) state_ = step(state_, load(p));
    std::memcpy(word_, p, bytes);
    fill_ = bytes;
  }
  uint64_t value() const {
    uint64_t h = state_;
    if (fill_ > 0) {  // the last part-word, zero-padded; the length below tells the padding apart
      unsigned char last[8] = {};
      std::memcpy(last, word_, fill_);
      h = step(h, load(last));
    }
    return mix64(h ^ mix64(total_));
  }
  // 16 hex digits.
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(value()));
    return buf;
  }
  static uint64_t of(const std::string& bytes) {
    ContentHash h;
    h.add(bytes.data(), bytes.size());
    return h.value();
  }

 private:
  static uint64_t load(const unsigned char* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  }
  static uint64_t step(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
  }

  uint64_t state_ = 0;
  uint64_t total_ = 0;
  unsigned char word_[8] = {};
  size_t fill_ = 0;
};

}  // namespace mics::data
