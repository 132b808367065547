// Softmax cross-entropy, loss and gradient fused: the launch of cross_entropy_kernels.cuh.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
// After device_common.cuh: the kernel's element types and conversions come from there.
#include "kernels/cuda/cross_entropy_kernels.cuh"

namespace mics::cuda {

void launch_cross_entropy(DType t, void* losses, void* d_logits, const void* logits,
                          const int32_t* labels, int64_t rows, int64_t vocab, float grad_scale,
                          int* error, cudaStream_t s) {
  if (rows <= 0 || vocab <= 0) return;
  dispatch("cross_entropy", t, [&](auto v) {
    using T = decltype(v);
    cross_entropy_kernel<T><<<static_cast<unsigned>(rows), row_threads(vocab), 0, s>>>(
        static_cast<T*>(losses), static_cast<T*>(d_logits), static_cast<const T*>(logits),
        labels, vocab, grad_scale, error);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
