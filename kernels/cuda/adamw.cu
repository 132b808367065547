// AdamW over fp32 shards (the kernels: adamw_kernels.cuh): the launcher picks the
// four-elements-a-thread kernel where every array is aligned for it, and bounds the grid
// for the side queue (CudaBackendOptions::side_queue_sms): the kernels stride over the span,
// so any grid covers it.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/adamw_kernels.cuh"

namespace mics::cuda {
namespace {

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void launch_adamw(float* param, DType grad_t, const void* grad, float* m, float* v, int64_t n,
                  const AdamWScalars& k, DType copy_t, void* copy, int max_blocks, cudaStream_t s) {
  if (n <= 0) return;
  // Bounded: a few large blocks, each striding over the span; one block holds one SM.
  constexpr int kBoundedThreads = 1024;
  const int threads = max_blocks > 0 ? kBoundedThreads : kThreads;
  auto grid = [&](int64_t items) {
    const unsigned usual = grid_for(items > 0 ? items : 1, threads);
    return max_blocks > 0 && usual > static_cast<unsigned>(max_blocks) ? static_cast<unsigned>(max_blocks) : usual;
  };
  dispatch("adamw", grad_t, [&](auto g) {
    using G = decltype(g);
    const G* gr = static_cast<const G*>(grad);
    dispatch("adamw", copy != nullptr ? copy_t : DType::f32, [&](auto c) {
      using C = decltype(c);
      C* out = static_cast<C*>(copy);
      if (aligned16(param) && aligned16(m) && aligned16(v) && aligned_to(gr, 4 * sizeof(G)) &&
          (out == nullptr || aligned_to(out, 4 * sizeof(C)))) {
        adamw_vec_kernel<G, C><<<grid(n / 4), threads, 0, s>>>(param, gr, m, v, n, k, out);
      } else {
        adamw_kernel<G, C><<<grid(n), threads, 0, s>>>(param, gr, m, v, n, k, out);
      }
      MICS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace mics::cuda
