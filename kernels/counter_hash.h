#pragma once
// splitmix64's finaliser: the one hash behind every counter-based random stream of the
// kernels and models (dropout masks, parameter initialisation, per-layer seeds), so that
// random numbers are pure functions of (seed, index) on every backend. Compiled for host
// and device alike (MICS_HOST_DEVICE), so the CPU and CUDA backends draw bit-identical
// dropout masks.
#include <cstdint>

#if defined(__CUDACC__)
#define MICS_HOST_DEVICE __host__ __device__
#else
#define MICS_HOST_DEVICE
#endif

namespace mics {

MICS_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A seed derived from `seed` for the sub-stream `salt` (a layer, a call site, a sample).
MICS_HOST_DEVICE inline uint64_t mix_seed(uint64_t seed, uint64_t salt) {
  return mix64(seed ^ mix64(salt));
}

// Keep decision for element `index` of a dropout site: a hash, so it can be regenerated.
// The uniform draw is the hash's top 24 bits times 2^-24: exact in fp32 on every device,
// so the comparison with `prob` gives the same answer everywhere.
MICS_HOST_DEVICE inline bool dropout_keep(uint64_t seed, uint64_t index, float prob) {
  const uint64_t bits = mix64(seed ^ mix64(index));
  const float uniform = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  return uniform >= prob;
}

}  // namespace mics
