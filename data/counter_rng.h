#pragma once
// Counter-based randomness: every draw is a pure function of (stream, counters), so a
// sample's tokens, order and masking never depend on which rank or thread computes them.
#include <cstdint>

namespace mics::data {

// SplitMix64 finaliser: a bijective 64-bit mixer with full avalanche.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Hash of a stream key and two counters; chaining the bijection keeps distinct
// (a, b) pairs from colliding within a stream.
constexpr uint64_t counter_hash(uint64_t stream, uint64_t a, uint64_t b) {
  return mix64(mix64(mix64(stream) ^ a) ^ b);
}

// Uniform double in [0, 1) from the top 53 bits.
constexpr double unit_double(uint64_t h) {
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Uniform integer in [0, bound) for 0 < bound < 2^32 by multiply-shift; the bias
// (at most bound / 2^32) is far below anything training could notice.
constexpr uint32_t below(uint64_t h, uint32_t bound) {
  return static_cast<uint32_t>(((h >> 32) * bound) >> 32);
}

}  // namespace mics::data
