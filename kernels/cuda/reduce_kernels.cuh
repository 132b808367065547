#pragma once
// The whole-tensor reduction kernels alone (reduce.cu launches them): per-block partials of
// a sum, a sum of squares (in double) or a count of NaN/Inf entries, then one block folding
// the partials. Fixed grid, fixed order, no atomics: deterministic. A thread reads 8
// elements per step (kVector: one 16-byte access for a half-precision tensor, two for fp32;
// the pointer 16-byte aligned) or one element per step otherwise, the n % 8 tail element by
// element: the gradient norm reads every gradient once a step, and one 2-byte load per
// thread in flight left it at about a quarter of the memory's bandwidth (2.1 ms for BERT's
// 16-layer slice on an H200, 2026-11-27). No CUDA header: the includer provides the
// element types with to_f, uint4 and isfinite (device_common.cuh for nvcc,
// tests/emulation/cuda_emulator.h on the host, where test_reduce_emulated.cpp runs them).
#include <cstdint>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/vector_map_kernels.cuh"  // Pack8, load_pack, kMapWidth

namespace mics::cuda {

// Calls add(to_f(x[i])) for this thread's elements of x[0, n), in a fixed order.
template <bool kVector, class T, class Add>
__device__ __forceinline__ void for_each_element(const T* x, int64_t n, Add&& add) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if constexpr (kVector) {
    const int64_t packs = n / kMapWidth;
    for (int64_t p = first; p < packs; p += stride) {
      const Pack8<T> in = load_pack(x + p * kMapWidth);
#pragma unroll
      for (int k = 0; k < kMapWidth; ++k) add(to_f(in.v[k]));
    }
    first += packs * kMapWidth;
  }
  for (int64_t i = first; i < n; i += stride) add(to_f(x[i]));
}

template <bool kVector, class T>
__global__ void sum_partials_kernel(const T* x, int64_t n, bool squares, double* partials) {
  __shared__ double scratch[32];
  double acc = 0;
  for_each_element<kVector>(x, n, [&](float f) {
    const double v = f;
    acc += squares ? v * v : v;
  });
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <bool kVector, class T>
__global__ void nonfinite_partials_kernel(const T* x, int64_t n, unsigned long long* partials) {
  __shared__ unsigned long long scratch[32];
  unsigned long long acc = 0;
  for_each_element<kVector>(x, n, [&](float f) { acc += isfinite(f) ? 0ull : 1ull; });
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// One block (a multiple of 32 threads) folds `count` partials: thread t sums entries t,
// t + blockDim.x, ... in order, then the block's sums are combined.
template <class A>
__global__ void fold_partials_kernel(const A* partials, int count, A* result) {
  __shared__ A scratch[32];
  A v = int(threadIdx.x) < count ? partials[threadIdx.x] : A(0);
  for (int i = int(threadIdx.x + blockDim.x); i < count; i += int(blockDim.x)) v += partials[i];
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) *result = v;
}

}  // namespace mics::cuda
