#pragma once
// Maps global sample indices to window slots: epoch e = i / n visits every window once,
// in a seeded pseudorandom order per epoch when shuffling. The permutation is a Feistel
// network over the next power-of-four domain with cycle-walking, so it needs no memory,
// no cache and no locking however many windows there are.
#include <bit>
#include <cstdint>
#include <stdexcept>

#include "data/counter_rng.h"

namespace mics::data {

class WindowOrder {
 public:
  WindowOrder(int64_t num_windows, uint64_t seed, bool shuffle)
      : n_(num_windows), seed_(seed), shuffle_(shuffle) {
    if (n_ <= 0) throw std::invalid_argument("WindowOrder needs at least one window");
    // Both halves get `half_bits_`, so the domain 4^half_bits_ is below 4n and
    // cycle-walking takes fewer than four steps on average.
    const int bits = std::bit_width(static_cast<uint64_t>(n_ - 1));
    half_bits_ = bits <= 1 ? 1 : (bits + 1) / 2;
  }

  int64_t num_windows() const { return n_; }

  // Window slot of global sample `index` (index >= 0).
  int64_t window_of(int64_t index) const {
    if (index < 0) throw std::out_of_range("sample index must be non-negative");
    const int64_t slot = index % n_;
    if (!shuffle_) return slot;
    const uint64_t epoch_key = counter_hash(seed_ ^ kOrderStream, static_cast<uint64_t>(index / n_), 0);
    uint64_t x = static_cast<uint64_t>(slot);
    do x = feistel(x, epoch_key); while (x >= static_cast<uint64_t>(n_));
    return static_cast<int64_t>(x);
  }

 private:
  static constexpr uint64_t kOrderStream = 0x6f72646572ULL;  // "order": separates from other uses of the seed
  static constexpr int kRounds = 6;

  uint64_t feistel(uint64_t x, uint64_t key) const {
    const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
    uint64_t left = x >> half_bits_, right = x & mask;
    for (int r = 0; r < kRounds; ++r) {
      const uint64_t next = left ^ (counter_hash(key, static_cast<uint64_t>(r), right) & mask);
      left = right;
      right = next;
    }
    return (left << half_bits_) | right;
  }

  int64_t n_;
  uint64_t seed_;
  bool shuffle_;
  int half_bits_ = 1;
};

}  // namespace mics::data
