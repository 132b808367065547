// Element-wise kernels: cast, add, scale, GELU, dropout (their element functions in
// elementwise_ops.cuh), and the row broadcast used for a bias. Grid-stride loops over
// 64-bit indices; the maps move 16 bytes per access when every pointer is 16-byte aligned
// (vector_map.cuh).
#include <cmath>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/elementwise_ops.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/vector_map.cuh"

namespace mics::cuda {
namespace {

template <class T>
__global__ void broadcast_rows_kernel(T* out, const T* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = bias[i % cols];
}

}  // namespace

void launch_cast(DType out_t, void* out, DType in_t, const void* in, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("cast", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("cast", in_t, [&](auto i) {
      using I = decltype(i);
      launch_unary_map(static_cast<O*>(out), static_cast<const I*>(in), n, CastOp<O>{}, s);
    });
  });
}

void launch_add(DType out_t, void* out, DType a_t, const void* a, DType b_t, const void* b,
                int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("add", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("add", a_t, [&](auto x) {
      using A = decltype(x);
      dispatch("add", b_t, [&](auto y) {
        using B = decltype(y);
        launch_binary_map(static_cast<O*>(out), static_cast<const A*>(a), static_cast<const B*>(b), n,
                          AddOp<O>{}, s);
      });
    });
  });
}

void launch_scale(DType t, void* x, int64_t n, double alpha, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("scale", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(x), static_cast<const T*>(x), n, ScaleOp<T>{alpha}, s);
  });
}

void launch_gelu_forward(DType t, void* out, const void* in, int64_t n, GeluKind kind,
                         cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_forward", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(out), static_cast<const T*>(in), n,
                     GeluForwardOp<T>{kind == GeluKind::tanh}, s);
  });
}

void launch_gelu_backward(DType t, void* d_in, const void* d_out, const void* in, int64_t n,
                          GeluKind kind, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_backward", t, [&](auto v) {
    using T = decltype(v);
    launch_binary_map(static_cast<T*>(d_in), static_cast<const T*>(d_out), static_cast<const T*>(in), n,
                      GeluBackwardOp<T>{kind == GeluKind::tanh}, s);
  });
}

void launch_dropout(DType t, void* out, const void* in, int64_t n, float prob, uint64_t seed,
                    cudaStream_t s) {
  if (n <= 0) return;
  const float keep_scale = 1.0f / (1.0f - prob);  // as the CPU's T(1) / (T(1) - T(p)), T = float
  dispatch("dropout", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(out), static_cast<const T*>(in), n, DropoutOp<T>{prob, keep_scale, seed}, s);
  });
}

void launch_broadcast_rows(DType t, void* out, const void* bias, int64_t rows, int64_t cols,
                           cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  dispatch("linear_forward", t, [&](auto v) {
    using T = decltype(v);
    broadcast_rows_kernel<T><<<grid_for(rows * cols), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(bias), rows, cols);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
