#pragma once
// Element-wise maps with 16-byte memory accesses. A thread moves 8 elements per step
// (one 16-byte access for a half-precision tensor, two for fp32) when every pointer is
// 16-byte aligned, and one element per step otherwise; the n % 8 tail is done element by
// element. The element function sees each element's flat index, so index-keyed ops
// (dropout's counter mask) give the same result on both paths.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/vector_map_kernels.cuh"

namespace mics::cuda {

// Launches the vector form when every pointer is 16-byte aligned; n > 0.
template <class O, class X, class F>
void launch_unary_map(O* out, const X* x, int64_t n, F f, cudaStream_t s) {
  if (aligned16(out) && aligned16(x)) {
    const int64_t packs = n / kMapWidth;
    map_kernel<true><<<grid_for(packs > 0 ? packs : 1), kThreads, 0, s>>>(out, n, f, x);
  } else {
    map_kernel<false><<<grid_for(n), kThreads, 0, s>>>(out, n, f, x);
  }
  MICS_CUDA_CHECK_LAUNCH();
}

template <class O, class X, class Y, class F>
void launch_binary_map(O* out, const X* x, const Y* y, int64_t n, F f, cudaStream_t s) {
  if (aligned16(out) && aligned16(x) && aligned16(y)) {
    const int64_t packs = n / kMapWidth;
    map_kernel<true><<<grid_for(packs > 0 ? packs : 1), kThreads, 0, s>>>(out, n, f, x, y);
  } else {
    map_kernel<false><<<grid_for(n), kThreads, 0, s>>>(out, n, f, x, y);
  }
  MICS_CUDA_CHECK_LAUNCH();
}

}  // namespace mics::cuda
