#pragma once
// Runs CUDA kernel source on the host, so that a kernel's index and fragment logic is
// checked on machines without a GPU (CI has none). Included in place of the CUDA headers,
// before the kernel source; no CUDA header may be in the same translation unit.
//
// A launch runs its blocks one after another. The threads of a block are coroutines on the
// calling thread (ucontext): each runs until it reaches a barrier (__syncthreads, or the
// warp-wide exchange inside a shuffle or an mma) and resumes once every thread the barrier
// waits for has arrived, as on the GPU. One warp at a time runs ahead to the block's next
// __syncthreads (the lowest-numbered first in even blocks, the highest in odd ones), so a
// missing barrier between a read of shared memory and the next write of it changes the
// results. A barrier that some thread never reaches (divergence) stops the program with a
// message instead of hanging.
//
// What the kernels may use: one-dimensional blocks of at most kMaxThreads threads;
// __shared__ arrays declared in a kernel of namespace mics::cuda (function-local statics
// here: one copy, which the threads of a block share); the dynamic shared memory as
// mics::cuda::shared_bytes. Both kinds are filled with 0xff bytes (NaN in fp32, bf16 and
// fp16) before every block, so that a read before the write shows and nothing carries over
// from the block before;
// __shfl_xor_sync on floats, doubles and unsigned long longs with the full mask; atomicOr on an int; __expf; the _rn fp32
// intrinsics; uint4 and float4; and, in mics::cuda, the element types and mma16816 of
// kernels/cuda/device_common.cuh and attention_fused.cu.
#include <math.h>  // fmaxf, logf, sqrtf in the global namespace, as CUDA code calls them

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "tests/cuda/host_dtype.h"

// ---------------------------------------------------------------- the CUDA language

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))  // (alignas may not stand after `static`)
#define __shared__ static
#define __syncthreads() ::mics::cuda_emulator::sync_block()

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
// The running thread's coordinates: the emulator sets them before it resumes a thread.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct alignas(16) float4 {
  float x, y, z, w;
};

inline int min(int a, int b) { return a < b ? a : b; }

// The hardware's ex2.approx of x log2(e) (the product rounded to fp32), here computed
// exactly and rounded once: the tolerances cover ex2.approx's ~2^-22 relative error.
inline float __expf(float x) {
  const float x_log2e = x * 1.44269504f;
  return static_cast<float>(std::exp2(static_cast<double>(x_log2e)));
}

// fp32 operations rounded once each, as the _rn intrinsics are (host float arithmetic is
// IEEE round-to-nearest; the tests build without FMA contraction).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }

// The value of lane (this lane ^ lane_mask); every lane of the warp must take part.
float __shfl_xor_sync(unsigned mask, float value, int lane_mask);
double __shfl_xor_sync(unsigned mask, double value, int lane_mask);
unsigned long long __shfl_xor_sync(unsigned mask, unsigned long long value, int lane_mask);

// The block's threads run one at a time, so a plain read-modify-write is atomic here.
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

// ---------------------------------------------------------------- kernels/cuda's device side

namespace mics::cuda {

// bf16 and fp16 as their bits, converted as the device converts (round to nearest even).
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};
inline float to_f(float x) { return x; }
inline float to_f(bf16 x) { return from_bf16(x.bits); }
inline float to_f(f16 x) { return from_f16(x.bits); }
template <class T> T from_f(float x);
template <> inline float from_f<float>(float x) { return x; }
template <> inline bf16 from_f<bf16>(float x) { return {bf16_bits(x)}; }
template <> inline f16 from_f<f16>(float x) { return {f16_bits(x)}; }

// c += A B: one warp-wide mma.sync.aligned.m16n8k16.row.col with fp32 accumulation, each
// lane passing its fragments as the PTX ISA lays them out (a: 4 registers of two elements,
// b0 and b1, c: 4 floats). The products are exact and summed in double, then rounded once.
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bf16);
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, f16);

// The dynamic shared memory (the kernels' extern __shared__ array): the launch's bytes of it
// are poisoned before each block, and bytes past them must stay untouched.
inline constexpr size_t kMaxDynamicSharedBytes = 227 * 1024;  // sm_90's opt-in limit
extern unsigned char shared_bytes[kMaxDynamicSharedBytes];

}  // namespace mics::cuda

// ---------------------------------------------------------------- launches

namespace mics::cuda_emulator {

inline constexpr int kMaxThreads = 1024;

// Runs `thread_body` as every thread of every block of `grid`; returns when all are done.
void run(dim3 grid, int threads_per_block, size_t dynamic_shared_bytes, const std::function<void()>& thread_body);

// kernel<<<grid, threads_per_block, dynamic_shared_bytes>>>(args...), run to completion.
template <class Kernel, class... Args>
void launch(dim3 grid, int threads_per_block, size_t dynamic_shared_bytes, Kernel kernel, Args... args) {
  run(grid, threads_per_block, dynamic_shared_bytes, [&] { kernel(args...); });
}

// __syncthreads(): waits for every thread of the block.
void sync_block();

}  // namespace mics::cuda_emulator
