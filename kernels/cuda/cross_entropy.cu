// Softmax cross-entropy, loss and gradient fused, one block per row: row max, sum of
// exponentials and the gradient, all in fp32. d_logits may alias logits: the label's logit
// is read first, every reduction pass finishes (block barriers) before the first write,
// and each thread then reads x[v] just before writing d[v].
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

template <class T>
__global__ void cross_entropy_kernel(T* losses, T* d_logits, const T* logits,
                                     const int32_t* labels, int64_t vocab, float grad_scale,
                                     int* error) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int32_t label = labels[r];
  const T* x = logits + r * vocab;
  T* d = d_logits != nullptr ? d_logits + r * vocab : nullptr;
  if (label >= vocab) {
    if (threadIdx.x == 0) atomicOr(error, kBadLabel);
    return;
  }
  if (label < 0) {  // ignored row
    if (threadIdx.x == 0) losses[r] = from_f<T>(0.0f);
    if (d != nullptr)
      for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) d[v] = from_f<T>(0.0f);
    return;
  }
  const float x_label = to_f(x[label]);  // before any write through an aliasing d
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) mx = fmaxf(mx, to_f(x[v]));
  mx = block_max(mx, scratch);
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) sum += expf(to_f(x[v]) - mx);
  sum = block_sum(sum, scratch);  // ends with a barrier: every read above is done
  const float log_sum = mx + logf(sum);
  if (threadIdx.x == 0) losses[r] = from_f<T>(log_sum - x_label);
  if (d == nullptr) return;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float p = expf(to_f(x[v]) - log_sum);
    d[v] = from_f<T>(grad_scale * (p - (v == label ? 1.0f : 0.0f)));
  }
}

}  // namespace

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
