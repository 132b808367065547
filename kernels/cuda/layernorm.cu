// LayerNorm forward and backward. One block per row; statistics and the backward's row
// means accumulated in fp32 (two passes over the row for the variance, no E[x^2] - E[x]^2
// cancellation). mean/rstd are stored in the op's dtype or in fp32 (S below). The
// parameter gradients are column reductions (column_reduce.cuh): fixed order,
// deterministic, no atomics.
#include "kernels/cuda/column_reduce.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

template <class T, class S>
__global__ void layernorm_forward_kernel(T* out, S* mean, S* rstd, const T* in, const T* gamma,
                                         const T* beta, int64_t cols, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = in + row * cols;
  T* y = out + row * cols;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += to_f(x[c]);
  const float mu = block_sum(sum, scratch) / static_cast<float>(cols);
  float var = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = to_f(x[c]) - mu;
    var += d * d;
  }
  var = block_sum(var, scratch) / static_cast<float>(cols);
  const float rs = 1.0f / sqrtf(var + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    y[c] = from_f<T>((to_f(x[c]) - mu) * rs * to_f(gamma[c]) + to_f(beta[c]));
  if (threadIdx.x == 0) {
    mean[row] = from_f<S>(mu);
    rstd[row] = from_f<S>(rs);
  }
}

// d_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = d_y * gamma.
template <class T, class S>
__global__ void layernorm_backward_kernel(T* d_in, const T* d_out, const T* in, const T* gamma,
                                          const S* mean, const S* rstd, int64_t cols,
                                          bool accumulate) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = in + row * cols;
  const T* dy = d_out + row * cols;
  T* dx = d_in + row * cols;
  const float mu = to_f(mean[row]), rs = to_f(rstd[row]);
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = to_f(dy[c]) * to_f(gamma[c]);
    sum_g += g;
    sum_gx += g * ((to_f(x[c]) - mu) * rs);
  }
  const float mean_g = block_sum(sum_g, scratch) / static_cast<float>(cols);
  const float mean_gx = block_sum(sum_gx, scratch) / static_cast<float>(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float xhat = (to_f(x[c]) - mu) * rs;
    const float g = to_f(dy[c]) * to_f(gamma[c]);
    const float v = rs * (g - mean_g - xhat * mean_gx);
    dx[c] = from_f<T>(accumulate ? to_f(dx[c]) + v : v);
  }
}

// d_gamma[c] += sum_r dy[r,c] xhat[r,c]; d_beta[c] += sum_r dy[r,c]. Block (32, 16) as in
// reduce.cu's column sums.
// The gamma/beta gradients' terms of column_reduce.cuh: row r adds dy * xhat (gamma) and
// dy (beta) to column c.
template <class T, class S>
struct LayerNormParamTerms {
  const T* d_out;
  const T* in;
  const S* mean;
  const S* rstd;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t c, float* sums) const {
    const float dy = to_f(d_out[r * cols + c]);
    sums[0] += dy * ((to_f(in[r * cols + c]) - to_f(mean[r])) * to_f(rstd[r]));
    sums[1] += dy;
  }
};

// Calls f(T{}, S{}) with S = T or float.
template <class F>
void dispatch_stats(const char* op, DType t, DType stats_t, F&& f) {
  dispatch(op, t, [&](auto v) {
    using T = decltype(v);
    if (stats_t == t) {
      f(T{}, T{});
    } else if (stats_t == DType::f32) {
      f(T{}, float{});
    } else {
      throw ShapeError(std::string(op) + ": mean/rstd must be " + dtype_name(t) + " or fp32, not " +
                       dtype_name(stats_t));
    }
  });
}

}  // namespace

void launch_layernorm_forward(DType t, DType stats_t, void* out, void* mean, void* rstd,
                              const void* in, const void* gamma, const void* beta, int64_t rows,
                              int64_t cols, float eps, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  dispatch_stats("layernorm_forward", t, stats_t, [&](auto tv, auto sv) {
    using T = decltype(tv);
    using S = decltype(sv);
    layernorm_forward_kernel<T, S><<<static_cast<unsigned>(rows), row_threads(cols), 0, s>>>(
        static_cast<T*>(out), static_cast<S*>(mean), static_cast<S*>(rstd),
        static_cast<const T*>(in), static_cast<const T*>(gamma), static_cast<const T*>(beta),
        cols, eps);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_layernorm_backward(DType t, DType stats_t, void* d_in, void* d_gamma, void* d_beta,
                               const void* d_out, const void* in, const void* gamma,
                               const void* mean, const void* rstd, int64_t rows, int64_t cols,
                               bool accumulate_d_in, float* partials, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  dispatch_stats("layernorm_backward", t, stats_t, [&](auto tv, auto sv) {
    using T = decltype(tv);
    using S = decltype(sv);
    // Parameter gradients first: they read d_out, which d_in must not alias anyway.
    launch_column_reduce<T, 2>({{static_cast<T*>(d_gamma), static_cast<T*>(d_beta)}}, rows, cols,
                               partials,
                               LayerNormParamTerms<T, S>{static_cast<const T*>(d_out),
                                                         static_cast<const T*>(in),
                                                         static_cast<const S*>(mean),
                                                         static_cast<const S*>(rstd), cols},
                               s);
    layernorm_backward_kernel<T, S><<<static_cast<unsigned>(rows), row_threads(cols), 0, s>>>(
        static_cast<T*>(d_in), static_cast<const T*>(d_out), static_cast<const T*>(in),
        static_cast<const T*>(gamma), static_cast<const S*>(mean), static_cast<const S*>(rstd),
        cols, accumulate_d_in);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
