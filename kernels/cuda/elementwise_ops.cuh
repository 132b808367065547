#pragma once
// The element functions of elementwise.cu's maps (vector_map.cuh): cast, add, scale, GELU
// (erf and tanh forms, the CPU backend's formulas evaluated in fp32) and dropout (the CPU
// backend's counter-based mask). No CUDA header: the includer provides the element types
// with to_f/from_f/from_d and erff/expf (device_common.cuh for nvcc;
// tests/emulation/cuda_emulator.h on the host, where test_row_kernels_emulated.cpp runs
// GELU and dropout through the map kernels).
#include <cstdint>

#include "kernels/counter_hash.h"

namespace mics::cuda {

// The CPU backend's constants, rounded to fp32 as the CPU's float instantiation does.
constexpr float kInvSqrt2 = static_cast<float>(0.70710678118654752440);
constexpr float kInvSqrt2Pi = static_cast<float>(0.39894228040143267794);  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = static_cast<float>(0.79788456080286535588);  // sqrt(2/pi)
constexpr float kTanhC = static_cast<float>(0.044715);
constexpr float kTanhC3 = static_cast<float>(3 * 0.044715);

template <class O>
struct CastOp {
  template <class I>
  __device__ O operator()(int64_t, I x) const { return from_f<O>(to_f(x)); }
};

template <class O>
struct AddOp {
  template <class A, class B>
  __device__ O operator()(int64_t, A a, B b) const { return from_f<O>(to_f(a) + to_f(b)); }
};

// x *= alpha in double, one rounding to T: the CPU's static_cast<T>(x * alpha).
template <class T>
struct ScaleOp {
  double alpha;
  __device__ T operator()(int64_t, T x) const { return from_d<T>(static_cast<double>(to_f(x)) * alpha); }
};

template <class T>
struct GeluForwardOp {
  bool tanh_form;
  __device__ T operator()(int64_t, T in) const {
    const float x = to_f(in);
    if (!tanh_form) return from_f<T>(0.5f * x * (1.0f + erff(x * kInvSqrt2)));
    // 0.5 (1 + tanh(u)) = sigmoid(2u), as the CPU writes it.
    const float u = kSqrt2OverPi * (x + kTanhC * x * x * x);
    return from_f<T>(x / (1.0f + expf(-2.0f * u)));
  }
};

// d_in = d_out * gelu'(in).
template <class T>
struct GeluBackwardOp {
  bool tanh_form;
  __device__ T operator()(int64_t, T d_out, T in) const {
    const float x = to_f(in);
    float d;
    if (!tanh_form) {
      const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      d = cdf + x * pdf;
    } else {
      // d/dx [x s(2u)] = s + x 2 s (1 - s) u', s = sigmoid(2u).
      const float u = kSqrt2OverPi * (x + kTanhC * x * x * x);
      const float s = 1.0f / (1.0f + expf(-2.0f * u));
      const float du = kSqrt2OverPi * (1.0f + kTanhC3 * x * x);
      d = s + 2.0f * x * s * (1.0f - s) * du;
    }
    return from_f<T>(to_f(d_out) * d);
  }
};

// The CPU backend's counter-based mask: element i is kept by its flat index alone.
template <class T>
struct DropoutOp {
  float prob, keep_scale;
  uint64_t seed;
  __device__ T operator()(int64_t i, T in) const {
    return dropout_keep(seed, static_cast<uint64_t>(i), prob) ? from_f<T>(to_f(in) * keep_scale)
                                                                : from_f<T>(0.0f);
  }
};

}  // namespace mics::cuda
