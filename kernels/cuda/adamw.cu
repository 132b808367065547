// AdamW on fp32 spans: the CPU backend's update (kernels/cpu/adamw.cpp) operation by
// operation, each rounded on its own (__fmul_rn / __fadd_rn / __fsub_rn / __fdiv_rn /
// __fsqrt_rn: nvcc may not fuse them into FMAs), with the scalars derived on the host by
// the CPU's own code. The CPU build does not contract either (no -ffp-contract=fast with
// FMA hardware enabled), so both backends give the same bits.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

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

// copy (C: float, bf16, fp16; null for none) receives the new param rounded to C.
template <class C>
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                             AdamWScalars k, C* copy) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_one(p, grad[i], mi, vi, k);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (copy != nullptr) copy[i] = from_f<C>(p);
  }
}

// float4 version for 16-byte aligned spans (the copy too); the tail (n % 4) is done
// element-wise.
template <class C>
__global__ void adamw_vec_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                                 AdamWScalars k, C* copy) {
  const int64_t vectors = n / 4;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < vectors;
       i += int64_t(gridDim.x) * blockDim.x) {
    float4 p = reinterpret_cast<float4*>(param)[i];
    const float4 g = reinterpret_cast<const float4*>(grad)[i];
    float4 mi = reinterpret_cast<float4*>(m)[i];
    float4 vi = reinterpret_cast<float4*>(v)[i];
    adamw_one(p.x, g.x, mi.x, vi.x, k);
    adamw_one(p.y, g.y, mi.y, vi.y, k);
    adamw_one(p.z, g.z, mi.z, vi.z, k);
    adamw_one(p.w, g.w, mi.w, vi.w, k);
    reinterpret_cast<float4*>(param)[i] = p;
    reinterpret_cast<float4*>(m)[i] = mi;
    reinterpret_cast<float4*>(v)[i] = vi;
    if (copy != nullptr) {  // one 8-byte (half precision) or 16-byte (fp32) store
      struct alignas(4 * sizeof(C)) Four {
        C e[4];
      } c{{from_f<C>(p.x), from_f<C>(p.y), from_f<C>(p.z), from_f<C>(p.w)}};
      reinterpret_cast<Four*>(copy)[i] = c;
    }
  }
  const int64_t tail = vectors * 4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (tail < n) {
    float p = param[tail], mi = m[tail], vi = v[tail];
    adamw_one(p, grad[tail], mi, vi, k);
    param[tail] = p;
    m[tail] = mi;
    v[tail] = vi;
    if (copy != nullptr) copy[tail] = from_f<C>(p);
  }
}

}  // namespace

void launch_adamw(float* param, const float* grad, float* m, float* v, int64_t n,
                  const AdamWScalars& k, DType copy_t, void* copy, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("adamw", copy != nullptr ? copy_t : DType::f32, [&](auto c) {
    using C = decltype(c);
    C* out = static_cast<C*>(copy);
    if (aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v) && (out == nullptr || aligned16(out))) {
      const int64_t vectors = n / 4;
      adamw_vec_kernel<C><<<grid_for(vectors > 0 ? vectors : 1), kThreads, 0, s>>>(param, grad, m, v, n, k, out);
    } else {
      adamw_kernel<C><<<grid_for(n), kThreads, 0, s>>>(param, grad, m, v, n, k, out);
    }
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
