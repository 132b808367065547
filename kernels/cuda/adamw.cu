// AdamW over fp32 shards (the kernels: adamw_kernels.cuh): the launcher picks the
// four-elements-a-thread kernel where every array is aligned for it, and bounds the grid
// for the side queue (CudaBackendOptions::side_queue_sms), in chunks: the kernels stride
// over their span, so any grid covers it.
#include <algorithm>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/adamw_kernels.cuh"

namespace mics::cuda {
namespace {

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void launch_adamw(float* param, DType grad_t, const void* grad, float* m, float* v, int64_t n,
                  const AdamWScalars& k, DType copy_t, void* copy, int max_blocks, bool chunked, cudaStream_t s) {
  if (n <= 0) return;
  // Bounded: a few large blocks, each striding over the span; a block holds an SM (the
  // element-wise kernel's, with fewer registers, may pair on one), so at most max_blocks.
  constexpr int kBoundedThreads = kMaxAdamwThreads;
  // A block is never preempted, so a GEMM whose block waits for an SM the update holds
  // waits until that block ends: a bounded update runs in chunks of 64 sweeps of its
  // blocks, not a whole layer's span at once. A chunk moves 7.3 MB per block (1024 threads
  // x 4 elements x 64 sweeps x 28 bytes): about 0.1 ms at 70 GB/s per SM, an estimate the
  // GPU run has yet to check. At each chunk's end the higher-priority forward may take the
  // SMs back, so the update runs mostly between its kernels' waves. Chunks are whole
  // 4-element vectors, so each keeps the alignment of the span. Unchunked, the update holds
  // its SMs until the span is done (a partition of the SMs for that time).
  constexpr int64_t kSweeps = 64;
  const int64_t chunk = int64_t{max_blocks} * kBoundedThreads * 4 * kSweeps;
  if (max_blocks > 0 && chunked && n > chunk) {
    const size_t grad_bytes = dtype_size(grad_t), copy_bytes = copy != nullptr ? dtype_size(copy_t) : 0;
    for (int64_t at = 0; at < n; at += chunk)
      launch_adamw(param + at, grad_t, static_cast<const char*>(grad) + static_cast<size_t>(at) * grad_bytes, m + at,
                   v + at, std::min(chunk, n - at), k, copy_t,
                   copy != nullptr ? static_cast<char*>(copy) + static_cast<size_t>(at) * copy_bytes : nullptr,
                   max_blocks, chunked, s);
    return;
  }
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
