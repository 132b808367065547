// The element-wise halves of attention: the masked softmax over score rows (forward) and
// its backward. The matrix products around them are cuBLASLt batched GEMMs issued by the
// backend (cuda_backend.cpp). One block per row of T scores, three passes over the row
// (max, sum of exponentials, normalise), all in fp32; the row is re-read from L2.
#include "kernels/counter_hash.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

// Row r of scores[B*H*T, T]: bh = r / T, query i = r % T, batch b = bh / H. The dropout
// index of entry j is r * T + j, the flat index into probs[B,H,T,T] (CPU: prob_index).
template <class T>
__global__ void attention_softmax_kernel(T* scores, const int32_t* key_keep, int64_t heads,
                                         int64_t seq, bool causal, float drop_prob,
                                         float keep_scale, uint64_t drop_seed) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t i = r % seq, b = (r / seq) / heads;
  T* row = scores + r * seq;
  const int32_t* keep = key_keep != nullptr ? key_keep + b * seq : nullptr;
  auto hidden = [&](int64_t j) { return (causal && j > i) || (keep != nullptr && keep[j] == 0); };

  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < seq; j += blockDim.x)
    if (!hidden(j)) mx = fmaxf(mx, to_f(row[j]));
  mx = block_max(mx, scratch);
  if (mx == -INFINITY) {  // every key hidden: probabilities 0, as the CPU backend
    for (int64_t j = threadIdx.x; j < seq; j += blockDim.x) row[j] = from_f<T>(0.0f);
    return;
  }
  float denom = 0.0f;
  for (int64_t j = threadIdx.x; j < seq; j += blockDim.x)
    if (!hidden(j)) denom += expf(to_f(row[j]) - mx);
  denom = block_sum(denom, scratch);
  const float inv = 1.0f / denom;
  for (int64_t j = threadIdx.x; j < seq; j += blockDim.x) {
    float p = hidden(j) ? 0.0f : expf(to_f(row[j]) - mx) * inv;
    if (drop_prob > 0.0f)
      p = dropout_keep(drop_seed, static_cast<uint64_t>(r * seq + j), drop_prob) ? p * keep_scale
                                                                                 : 0.0f;
    row[j] = from_f<T>(p);
  }
}

// grad holds dP' (the gradient of the dropped probabilities); dP = mask * dP' / (1 - p),
// dS = scale * P (dP - sum_j P dP), written over grad. dP stays in fp32 (the CPU rounds it
// to T first; in fp32 the two agree).
template <class T>
__global__ void attention_softmax_backward_kernel(T* grad, const T* probs, int64_t seq,
                                                  float scale, float drop_prob, float keep_scale,
                                                  uint64_t drop_seed) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  T* g = grad + r * seq;
  const T* p = probs + r * seq;
  auto d_prob = [&](int64_t j) {
    const float d = to_f(g[j]);
    if (drop_prob <= 0.0f) return d;
    return dropout_keep(drop_seed, static_cast<uint64_t>(r * seq + j), drop_prob) ? d * keep_scale
                                                                                  : 0.0f;
  };
  float inner = 0.0f;
  for (int64_t j = threadIdx.x; j < seq; j += blockDim.x) inner += to_f(p[j]) * d_prob(j);
  inner = block_sum(inner, scratch);
  for (int64_t j = threadIdx.x; j < seq; j += blockDim.x)
    g[j] = from_f<T>(to_f(p[j]) * (d_prob(j) - inner) * scale);
}

}  // namespace

void launch_attention_softmax(DType t, void* scores, const int32_t* key_keep, int64_t batch,
                              int64_t heads, int64_t seq, bool causal, float drop_prob,
                              uint64_t drop_seed, cudaStream_t s) {
  const int64_t rows = batch * heads * seq;
  if (rows <= 0) return;
  const float keep_scale = drop_prob > 0.0f ? 1.0f / (1.0f - drop_prob) : 1.0f;
  dispatch("attention_forward", t, [&](auto v) {
    using T = decltype(v);
    attention_softmax_kernel<T><<<static_cast<unsigned>(rows), row_threads(seq), 0, s>>>(
        static_cast<T*>(scores), key_keep, heads, seq, causal, drop_prob, keep_scale, drop_seed);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_attention_softmax_backward(DType t, void* grad, const void* probs, int64_t rows,
                                       int64_t seq, float scale, float drop_prob,
                                       uint64_t drop_seed, cudaStream_t s) {
  if (rows <= 0) return;
  const float keep_scale = drop_prob > 0.0f ? 1.0f / (1.0f - drop_prob) : 1.0f;
  dispatch("attention_backward", t, [&](auto v) {
    using T = decltype(v);
    attention_softmax_backward_kernel<T><<<static_cast<unsigned>(rows), row_threads(seq), 0, s>>>(
        static_cast<T*>(grad), static_cast<const T*>(probs), seq, scale, drop_prob, keep_scale,
        drop_seed);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
