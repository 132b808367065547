// AdamW on fp32 spans, with PyTorch's update order and bias correction.
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWSpec& s) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(s.beta1), static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.step));
  const float step_size = static_cast<float>(s.lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float decay = 1.0f - s.lr * s.weight_decay;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * s.grad_scale;
    m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    const float denom = std::sqrt(v[i]) * inv_sqrt_bc2 + s.eps;
    param[i] = param[i] * decay - step_size * m[i] / denom;
  }
}

}  // namespace mics::cpu
