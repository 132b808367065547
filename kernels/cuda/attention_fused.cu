// Launchers of the fused (flash-style) attention kernels of attention_fused_kernels.cuh,
// with the two pieces of those kernels that exist only on a GPU: the mma.sync wrappers and
// the dynamic shared memory (tests/emulation/cuda_emulator.h has host versions of both).
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

// mma.sync m16n8k16 needs sm_80; older targets (a CUDA 12 build for V100) compile a trap,
// and the backend refuses the fused path below compute capability 8.0 before launching.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MICS_MMA_SM80(...) __trap()
#else
#define MICS_MMA_SM80(...) __VA_ARGS__
#endif

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bf16) {
  MICS_MMA_SM80(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, f16) {
  MICS_MMA_SM80(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

// The block's dynamic shared memory (as many bytes as the launch gives).
extern __shared__ __align__(16) unsigned char shared_bytes[];

}  // namespace
}  // namespace mics::cuda

// After the two pieces above: the kernels' templates name them.
#include "kernels/cuda/attention_fused_kernels.cuh"

namespace mics::cuda {
namespace {

FusedArgs make_args(const FusedAttentionShape& a) {
  FusedArgs f{};
  f.seq = static_cast<int>(a.seq);
  f.heads = static_cast<int>(a.heads);
  f.causal = a.causal;
  f.scale = 1.0f / sqrtf(static_cast<float>(a.head_dim));
  f.drop_prob = a.drop_prob;
  f.keep_scale = a.drop_prob > 0.0f ? 1.0f / (1.0f - a.drop_prob) : 1.0f;
  f.drop_seed = a.drop_seed;
  f.key_keep = a.key_keep;
  return f;
}

// Calls fn(T{}, integral_constant<D>) for a supported (dtype, head_dim).
template <class F>
void dispatch_fused(const char* op, DType t, int64_t head_dim, F&& fn) {
  auto with_dim = [&](auto v) {
    if (head_dim == 64) return fn(v, std::integral_constant<int, 64>{});
    if (head_dim == 128) return fn(v, std::integral_constant<int, 128>{});
    throw ShapeError(std::string(op) + ": the CUDA fused attention has head dimensions 64 and 128, not " +
                     std::to_string(head_dim) + " (set 'runtime.attention' to \"materialized\")");
  };
  if (t == DType::bf16) return with_dim(bf16{});
  if (t == DType::f16) return with_dim(f16{});
  throw ShapeError(std::string(op) + ": the CUDA fused attention runs in bf16 or fp16, not " + dtype_name(t) +
                   " (set 'runtime.attention' to \"materialized\")");
}

dim3 fused_grid(const FusedAttentionShape& a) {
  return dim3(static_cast<unsigned>((a.seq + kTile - 1) / kTile), static_cast<unsigned>(a.batch * a.heads));
}

}  // namespace

size_t fused_attention_shared_bytes(int64_t head_dim) {
  // The dK/dV kernel needs the most: its dynamic tiles plus the static lse and delta rows.
  const size_t statics = 2 * kTile * sizeof(float);
  if (head_dim == 64) return dkdv_shared_elements<64>() * 2 + statics;
  if (head_dim == 128) return dkdv_shared_elements<128>() * 2 + statics;
  return 0;
}

void launch_attention_forward_fused(DType t, void* out, float* lse, const void* qkv, const FusedAttentionShape& a,
                                    cudaStream_t s) {
  if (a.batch * a.heads * a.seq <= 0) return;
  dispatch_fused("attention_forward_fused", t, a.head_dim, [&](auto v, auto dim) {
    using T = decltype(v);
    constexpr int D = decltype(dim)::value;
    fused_forward_kernel<T, D><<<fused_grid(a), kCtaThreads, 0, s>>>(static_cast<T*>(out), lse,
                                                                     static_cast<const T*>(qkv), make_args(a));
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_attention_backward_fused(DType t, void* d_qkv, const void* d_out, const void* qkv, const void* out,
                                     const float* lse, float* delta, const FusedAttentionShape& a, cudaStream_t s) {
  if (a.batch * a.heads * a.seq <= 0) return;
  dispatch_fused("attention_backward_fused", t, a.head_dim, [&](auto v, auto dim) {
    using T = decltype(v);
    constexpr int D = decltype(dim)::value;
    const int64_t rows = a.batch * a.heads * a.seq;
    fused_delta_kernel<T><<<grid_for(rows), kThreads, 0, s>>>(delta, static_cast<const T*>(d_out),
                                                               static_cast<const T*>(out), rows,
                                                               static_cast<int>(a.seq), static_cast<int>(a.heads),
                                                               D);
    MICS_CUDA_CHECK_LAUNCH();
    const FusedArgs f = make_args(a);
    const size_t dkdv_bytes = dkdv_shared_elements<D>() * sizeof(T);
    MICS_CUDA_CHECK(cudaFuncSetAttribute(fused_backward_dkdv_kernel<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dkdv_bytes)));
    fused_backward_dkdv_kernel<T, D><<<fused_grid(a), kCtaThreads, dkdv_bytes, s>>>(
        static_cast<T*>(d_qkv), static_cast<const T*>(d_out), static_cast<const T*>(qkv), lse, delta, f);
    MICS_CUDA_CHECK_LAUNCH();
    const size_t dq_bytes = dq_shared_elements<D>() * sizeof(T);
    MICS_CUDA_CHECK(cudaFuncSetAttribute(fused_backward_dq_kernel<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dq_bytes)));
    fused_backward_dq_kernel<T, D><<<fused_grid(a), kCtaThreads, dq_bytes, s>>>(
        static_cast<T*>(d_qkv), static_cast<const T*>(d_out), static_cast<const T*>(qkv), lse, delta, f);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
