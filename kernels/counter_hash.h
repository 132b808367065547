#pragma once
// splitmix64's finaliser: the one hash behind every counter-based random stream of the
// kernels and models (dropout masks, parameter initialisation, per-layer seeds), so that
// random numbers are pure functions of (seed, index) on every backend.
#include <cstdint>

namespace mics {

inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A seed derived from `seed` for the sub-stream `salt` (a layer, a call site, a sample).
inline uint64_t mix_seed(uint64_t seed, uint64_t salt) { return mix64(seed ^ mix64(salt)); }

}  // namespace mics
