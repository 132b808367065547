#pragma once
// AdamW's per-step scalars, shared by the host (cuda_backend.cpp) and the kernels
// (adamw_kernels.cuh), which may be compiled without CUDA headers.
#include <cmath>

#include "kernels/ops.h"

namespace mics::cuda {

struct AdamWScalars {
  float beta1, beta2, eps, grad_scale;
  float step_size, inv_sqrt_bc2, decay;
};

// Exactly as kernels/cpu/adamw.cpp derives them (bias corrections in double), so that the
// device repeats the CPU's update bit for bit.
inline AdamWScalars adamw_scalars(const AdamWSpec& s) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(s.beta1), static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.step));
  AdamWScalars k{};
  k.beta1 = s.beta1;
  k.beta2 = s.beta2;
  k.eps = s.eps;
  k.grad_scale = s.grad_scale;
  k.step_size = static_cast<float>(s.lr / bc1);
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  k.decay = 1.0f - s.lr * s.weight_decay;
  return k;
}

}  // namespace mics::cuda
