#pragma once
// The AdamW kernels alone: adamw.cu compiles them with nvcc and launches them, and
// tests/emulation/test_adamw_emulated.cpp compiles them for the host under
// tests/emulation/cuda_emulator.h, to check them bit for bit against the CPU where there is
// no GPU. So this file includes no CUDA header; whoever includes it provides, in mics::cuda,
// the element types bf16 and f16 with to_f and from_f (float too), float4, and the
// correctly rounded __fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn / __fsqrt_rn.
//
// The update is the CPU backend's (kernels/cpu/adamw.cpp) operation by operation, each
// rounded on its own (the _rn intrinsics: nvcc may not fuse them into FMAs), with the
// scalars derived on the host by the CPU's own code. The CPU build does not contract either
// (no -ffp-contract=fast with FMA hardware enabled), so both give the same bits.
#include <cstdint>

#include "kernels/cuda/adamw_scalars.h"

namespace mics::cuda {

__device__ __forceinline__ void adamw_one(float& p, float g_raw, float& m, float& v,
                                          const AdamWScalars& k) {
  const float g = __fmul_rn(g_raw, k.grad_scale);
  // m = beta1 * m + (1 - beta1) * g
  m = __fadd_rn(__fmul_rn(k.beta1, m), __fmul_rn(__fsub_rn(1.0f, k.beta1), g));
  // v = beta2 * v + (1 - beta2) * g * g   (left to right: ((1 - beta2) * g) * g)
  v = __fadd_rn(__fmul_rn(k.beta2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, k.beta2), g), g));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), k.inv_sqrt_bc2), k.eps);
  // p = p * decay - step_size * m / denom   ((step_size * m) / denom)
  p = __fsub_rn(__fmul_rn(p, k.decay), __fdiv_rn(__fmul_rn(k.step_size, m), denom));
}

// Four consecutive elements of T in one aligned load or store (16 bytes for fp32, 8 for
// half precision).
template <class T>
struct alignas(4 * sizeof(T)) Four {
  T e[4];
};

// Element i of the arrays below, updated in place.
template <class G, class C>
__device__ __forceinline__ void adamw_element(int64_t i, float* param, const G* grad, float* m, float* v,
                                              const AdamWScalars& k, C* copy) {
  float p = param[i], mi = m[i], vi = v[i];
  adamw_one(p, to_f(grad[i]), mi, vi, k);
  param[i] = p;
  m[i] = mi;
  v[i] = vi;
  if (copy != nullptr) copy[i] = from_f<C>(p);
}

// grad (G: float, or a model's own bf16/fp16 gradient, widened exactly); copy (C: float,
// bf16, fp16; null for none) receives the new param rounded to C.
// Blocks of up to kMaxAdamwThreads (adamw.cu's bounded side-queue launch): the compiler
// keeps each kernel within the 64 registers a thread of such a block can have.
constexpr int kMaxAdamwThreads = 1024;

template <class G, class C>
__global__ void __launch_bounds__(kMaxAdamwThreads) adamw_kernel(float* param, const G* grad, float* m, float* v, int64_t n,
                             AdamWScalars k, C* copy) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    adamw_element(i, param, grad, m, v, k, copy);
}

// Four elements a thread for aligned spans (the gradient and copy at their own widths);
// the tail (n % 4) is done element-wise.
template <class G, class C>
__global__ void __launch_bounds__(kMaxAdamwThreads) adamw_vec_kernel(float* param, const G* grad, float* m, float* v, int64_t n,
                                 AdamWScalars k, C* copy) {
  const int64_t vectors = n / 4;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < vectors;
       i += int64_t(gridDim.x) * blockDim.x) {
    float4 p = reinterpret_cast<float4*>(param)[i];
    const Four<G> g = reinterpret_cast<const Four<G>*>(grad)[i];
    float4 mi = reinterpret_cast<float4*>(m)[i];
    float4 vi = reinterpret_cast<float4*>(v)[i];
    adamw_one(p.x, to_f(g.e[0]), mi.x, vi.x, k);
    adamw_one(p.y, to_f(g.e[1]), mi.y, vi.y, k);
    adamw_one(p.z, to_f(g.e[2]), mi.z, vi.z, k);
    adamw_one(p.w, to_f(g.e[3]), mi.w, vi.w, k);
    reinterpret_cast<float4*>(param)[i] = p;
    reinterpret_cast<float4*>(m)[i] = mi;
    reinterpret_cast<float4*>(v)[i] = vi;
    if (copy != nullptr)
      reinterpret_cast<Four<C>*>(copy)[i] = Four<C>{{from_f<C>(p.x), from_f<C>(p.y), from_f<C>(p.z), from_f<C>(p.w)}};
  }
  const int64_t tail = vectors * 4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (tail < n) adamw_element(tail, param, grad, m, v, k, copy);
}

}  // namespace mics::cuda
