// AdamW over fp32 shards (the kernels: adamw_kernels.cuh): the launcher picks the
// four-elements-a-thread kernel where every array is aligned for it.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/adamw_kernels.cuh"

namespace mics::cuda {
namespace {

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void launch_adamw(float* param, DType grad_t, const void* grad, float* m, float* v, int64_t n,
                  const AdamWScalars& k, DType copy_t, void* copy, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("adamw", grad_t, [&](auto g) {
    using G = decltype(g);
    const G* gr = static_cast<const G*>(grad);
    dispatch("adamw", copy != nullptr ? copy_t : DType::f32, [&](auto c) {
      using C = decltype(c);
      C* out = static_cast<C*>(copy);
      if (aligned16(param) && aligned16(m) && aligned16(v) && aligned_to(gr, 4 * sizeof(G)) &&
          (out == nullptr || aligned_to(out, 4 * sizeof(C)))) {
        const int64_t vectors = n / 4;
        adamw_vec_kernel<G, C><<<grid_for(vectors > 0 ? vectors : 1), kThreads, 0, s>>>(param, gr, m, v, n, k, out);
      } else {
        adamw_kernel<G, C><<<grid_for(n), kThreads, 0, s>>>(param, gr, m, v, n, k, out);
      }
      MICS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace mics::cuda
