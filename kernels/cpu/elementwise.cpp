// GELU in both of its forms: exact (erf, BERT) and the tanh approximation (GPT-2).
#include <cmath>
#include <numbers>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

namespace {
constexpr double kTanhC = 0.044715;
const double kSqrt2OverPi = std::sqrt(2.0 / std::numbers::pi);
}  // namespace

template <class T>
void gelu_forward(T* out, const T* in, int64_t n, GeluKind kind) {
  if (kind == GeluKind::erf) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T x = in[i];
      out[i] = T(0.5) * x * (T(1) + std::erf(x * T(std::numbers::sqrt2 / 2)));
    }
  } else {
    // 0.5 * (1 + tanh(u)) = sigmoid(2u): one exp instead of a tanh.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T x = in[i];
      const T u = T(kSqrt2OverPi) * (x + T(kTanhC) * x * x * x);
      out[i] = x / (T(1) + std::exp(T(-2) * u));
    }
  }
}

template <class T>
void gelu_backward(T* d_in, const T* d_out, const T* in, int64_t n, GeluKind kind) {
  if (kind == GeluKind::erf) {
    const T inv_sqrt_2pi = T(1.0 / std::sqrt(2.0 * std::numbers::pi));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T x = in[i];
      const T cdf = T(0.5) * (T(1) + std::erf(x * T(std::numbers::sqrt2 / 2)));
      const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x * x);
      d_in[i] = d_out[i] * (cdf + x * pdf);
    }
  } else {
    // d/dx [x * s(2u)] = s + x * 2 s (1 - s) u', s = sigmoid(2u).
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T x = in[i];
      const T u = T(kSqrt2OverPi) * (x + T(kTanhC) * x * x * x);
      const T s = T(1) / (T(1) + std::exp(T(-2) * u));
      const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kTanhC) * x * x);
      d_in[i] = d_out[i] * (s + T(2) * x * s * (T(1) - s) * du);
    }
  }
}

template <class T>
void dropout_forward(T* out, const T* in, int64_t n, DropoutSpec spec) {
  const T keep_scale = T(1) / (T(1) - T(spec.prob));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    out[i] = dropout_keep(spec.seed, static_cast<uint64_t>(i), spec.prob) ? in[i] * keep_scale
                                                                           : T(0);
}

template void gelu_forward<float>(float*, const float*, int64_t, GeluKind);
template void gelu_forward<double>(double*, const double*, int64_t, GeluKind);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, GeluKind);
template void gelu_backward<double>(double*, const double*, const double*, int64_t, GeluKind);
template void dropout_forward<float>(float*, const float*, int64_t, DropoutSpec);
template void dropout_forward<double>(double*, const double*, int64_t, DropoutSpec);

}  // namespace mics::cpu
