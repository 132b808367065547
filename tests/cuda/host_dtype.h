#pragma once
// Host-side bf16 / fp16 conversions for the CUDA tests: round to nearest even, exactly as
// the device's __float2bfloat16_rn / __float2half_rn, and exact widening.
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/tensor.h"

namespace mics {

using Vec = std::vector<double>;

inline uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f16_bits(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // GCC: round to nearest even
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
inline float from_f16(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}

inline double round_to(DType t, double x) {
  const float f = static_cast<float>(x);
  switch (t) {
    case DType::f32: return f;
    case DType::bf16: return from_bf16(bf16_bits(f));
    case DType::f16: return from_f16(f16_bits(f));
    default: return x;
  }
}
inline Vec rounded(DType t, Vec v) {
  for (double& x : v) x = round_to(t, x);
  return v;
}

inline std::vector<char> encode(DType t, const Vec& v) {
  std::vector<char> bytes(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = static_cast<float>(v[i]);
    if (t == DType::f64) {
      std::memcpy(&bytes[i * 8], &v[i], 8);
    } else if (t == DType::f32) {
      std::memcpy(&bytes[i * 4], &f, 4);
    } else {
      const uint16_t b = t == DType::bf16 ? bf16_bits(f) : f16_bits(f);
      std::memcpy(&bytes[i * 2], &b, 2);
    }
  }
  return bytes;
}
inline Vec decode(DType t, const std::vector<char>& bytes) {
  const size_t n = bytes.size() / dtype_size(t);
  Vec v(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::f64) {
      std::memcpy(&v[i], &bytes[i * 8], 8);
    } else if (t == DType::f32) {
      float f;
      std::memcpy(&f, &bytes[i * 4], 4);
      v[i] = f;
    } else {
      uint16_t b;
      std::memcpy(&b, &bytes[i * 2], 2);
      v[i] = t == DType::bf16 ? from_bf16(b) : from_f16(b);
    }
  }
  return v;
}

}  // namespace mics
