// LayerNorm forward/backward, statistics accumulated in double for every element type.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma, const T* beta,
                       int64_t rows, int64_t cols, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = in + r * cols;
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += x[c];
    const double mu = sum / static_cast<double>(cols);
    double var = 0;
    for (int64_t c = 0; c < cols; ++c) var += (x[c] - mu) * (x[c] - mu);
    const double rs = 1.0 / std::sqrt(var / static_cast<double>(cols) + eps);
    T* y = out + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      y[c] = static_cast<T>((x[c] - mu) * rs) * gamma[c] + beta[c];
    mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(rs);
  }
}

template <class T>
void layernorm_backward(T* d_in, T* d_gamma, T* d_beta, const T* d_out, const T* in,
                        const T* gamma, const T* mean, const T* rstd, int64_t rows, int64_t cols,
                        bool accumulate_d_in, bool accumulate_params) {
  // d_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = d_y * gamma.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = in + r * cols;
    const T* dy = d_out + r * cols;
    const double mu = mean[r], rs = rstd[r];
    double mean_g = 0, mean_gx = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double g = static_cast<double>(dy[c]) * gamma[c];
      mean_g += g;
      mean_gx += g * (x[c] - mu) * rs;
    }
    mean_g /= static_cast<double>(cols);
    mean_gx /= static_cast<double>(cols);
    T* dx = d_in + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (x[c] - mu) * rs;
      const double g = static_cast<double>(dy[c]) * gamma[c];
      const T v = static_cast<T>(rs * (g - mean_g - xhat * mean_gx));
      dx[c] = accumulate_d_in ? dx[c] + v : v;
    }
  }
  // Parameter gradients summed over rows in a fixed order, so results are reproducible.
  if (!accumulate_params) {
    std::fill(d_gamma, d_gamma + cols, T(0));
    std::fill(d_beta, d_beta + cols, T(0));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = in + r * cols;
    const T* dy = d_out + r * cols;
    const T mu = mean[r], rs = rstd[r];
    for (int64_t c = 0; c < cols; ++c) {
      d_gamma[c] += dy[c] * (x[c] - mu) * rs;
      d_beta[c] += dy[c];
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t, double);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t,
                                        int64_t, bool, bool);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t, bool, bool);

}  // namespace mics::cpu
