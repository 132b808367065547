#pragma once
// Device-side helpers shared by the kernel files: element types and conversions, the dtype
// dispatch, launch geometry and block reductions. Half-precision tensors are read into
// fp32, computed on in fp32, and rounded once (round to nearest even) on the way out.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/tensor.h"

#include "kernels/cuda/block_reduce.cuh"  // warp_sum, block_sum, warp_max, block_max (after the CUDA headers)

namespace mics::cuda {

using bf16 = __nv_bfloat16;
using f16 = __half;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(f16 x) { return __half2float(x); }

template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 from_f<f16>(float x) { return __float2half_rn(x); }

// From double with a single rounding (no double rounding through fp32).
template <class T> __device__ __forceinline__ T from_d(double x);
template <> __device__ __forceinline__ float from_d<float>(double x) { return __double2float_rn(x); }
template <> __device__ __forceinline__ bf16 from_d<bf16>(double x) { return __double2bfloat16(x); }
template <> __device__ __forceinline__ f16 from_d<f16>(double x) { return __double2half(x); }

// Calls f(T{}) with T the device type of `dtype` (fp32, bf16, fp16); fp64 is refused.
template <class F>
void dispatch(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::bf16: f(bf16{}); return;
    case DType::f16: f(f16{}); return;
    default:
      throw ShapeError(std::string(op) + ": the CUDA backend has no " + dtype_name(dtype));
  }
}

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (n > 0): enough to fill the device, capped
// so that the grid depends on n alone (results never depend on the device).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Threads for a kernel that gives one block to a row of `cols` elements.
inline int row_threads(int64_t cols) {
  if (cols >= 1024) return 256;
  if (cols >= 256) return 128;
  if (cols >= 64) return 64;
  return 32;
}

}  // namespace mics::cuda
