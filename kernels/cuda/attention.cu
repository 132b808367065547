// The element-wise halves of attention: the masked softmax over score rows (forward) and
// its backward. The matrix products around them are cuBLASLt batched GEMMs issued by the
// backend (cuda_backend.cpp). Rows of up to kWarpRowMax scores (every BERT and GPT
// sequence length in use) go to one warp each, the row held in registers: one read and
// one write of the B*H*T*T matrix, no block barriers. Longer rows take one block each,
// three passes over the row (max, sum of exponentials, normalise), re-read from L2. All
// arithmetic in fp32.
#include <type_traits>

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

constexpr int kWarpRowMax = 1024;        // longest row a warp holds in registers
constexpr int kRowsPerWarpBlock = 8;     // warps (rows) per block

// The warp kernels' view of one row: lane l holds entries j = l, l + 32, ... (kPerLane of
// them), so each load of the warp reads 32 consecutive entries.
template <class T, int kPerLane>
__global__ void __launch_bounds__(32 * kRowsPerWarpBlock)
    attention_softmax_warp_kernel(T* scores, const int32_t* key_keep, int64_t rows,
                                  int64_t heads, int64_t seq, bool causal, float drop_prob,
                                  float keep_scale, uint64_t drop_seed) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerWarpBlock) + (threadIdx.x >> 5);
  if (r >= rows) return;  // uniform across the warp
  const int lane = threadIdx.x & 31;
  const int64_t i = r % seq, b = (r / seq) / heads;
  T* row = scores + r * seq;
  const int32_t* keep = key_keep != nullptr ? key_keep + b * seq : nullptr;
  float x[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t j = k * 32 + lane;
    const bool shown = j < seq && !(causal && j > i) && !(keep != nullptr && keep[j] == 0);
    x[k] = shown ? to_f(row[j]) : -INFINITY;
    mx = fmaxf(mx, x[k]);
  }
  mx = warp_max(mx);
  if (mx == -INFINITY) {  // every key hidden: probabilities 0, as the CPU backend
#pragma unroll
    for (int k = 0; k < kPerLane; ++k)
      if (k * 32 + lane < seq) row[k * 32 + lane] = from_f<T>(0.0f);
    return;
  }
  float denom = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    x[k] = expf(x[k] - mx);  // hidden entries: exp(-inf) = 0
    denom += x[k];
  }
  const float inv = 1.0f / warp_sum(denom);
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t j = k * 32 + lane;
    if (j >= seq) continue;
    float p = x[k] * inv;
    if (drop_prob > 0.0f)
      p = dropout_keep(drop_seed, static_cast<uint64_t>(r * seq + j), drop_prob) ? p * keep_scale : 0.0f;
    row[j] = from_f<T>(p);
  }
}

template <class T, int kPerLane>
__global__ void __launch_bounds__(32 * kRowsPerWarpBlock)
    attention_softmax_backward_warp_kernel(T* grad, const T* probs, int64_t rows, int64_t seq,
                                           float scale, float drop_prob, float keep_scale,
                                           uint64_t drop_seed) {
  const int64_t r = blockIdx.x * int64_t(kRowsPerWarpBlock) + (threadIdx.x >> 5);
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  T* g = grad + r * seq;
  const T* p = probs + r * seq;
  float pv[kPerLane], dv[kPerLane];
  float inner = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t j = k * 32 + lane;
    pv[k] = j < seq ? to_f(p[j]) : 0.0f;
    dv[k] = j < seq ? to_f(g[j]) : 0.0f;
    if (drop_prob > 0.0f && j < seq)
      dv[k] = dropout_keep(drop_seed, static_cast<uint64_t>(r * seq + j), drop_prob) ? dv[k] * keep_scale : 0.0f;
    inner += pv[k] * dv[k];
  }
  inner = warp_sum(inner);
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int64_t j = k * 32 + lane;
    if (j < seq) g[j] = from_f<T>(pv[k] * (dv[k] - inner) * scale);
  }
}

// Calls f(std::integral_constant<int, kPerLane>) with the smallest of 4, 8, 16, 32 entries
// per lane that covers a row of `seq` (seq <= kWarpRowMax).
template <class F>
void with_per_lane(int64_t seq, F&& f) {
  if (seq <= 128) f(std::integral_constant<int, 4>{});
  else if (seq <= 256) f(std::integral_constant<int, 8>{});
  else if (seq <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

unsigned warp_row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock);
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
    if (seq <= kWarpRowMax) {
      with_per_lane(seq, [&](auto per_lane) {
        attention_softmax_warp_kernel<T, decltype(per_lane)::value>
            <<<warp_row_blocks(rows), 32 * kRowsPerWarpBlock, 0, s>>>(
                static_cast<T*>(scores), key_keep, rows, heads, seq, causal, drop_prob,
                keep_scale, drop_seed);
      });
      MICS_CUDA_CHECK_LAUNCH();
      return;
    }
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
    if (seq <= kWarpRowMax) {
      with_per_lane(seq, [&](auto per_lane) {
        attention_softmax_backward_warp_kernel<T, decltype(per_lane)::value>
            <<<warp_row_blocks(rows), 32 * kRowsPerWarpBlock, 0, s>>>(
                static_cast<T*>(grad), static_cast<const T*>(probs), rows, seq, scale, drop_prob,
                keep_scale, drop_seed);
      });
      MICS_CUDA_CHECK_LAUNCH();
      return;
    }
    attention_softmax_backward_kernel<T><<<static_cast<unsigned>(rows), row_threads(seq), 0, s>>>(
        static_cast<T*>(grad), static_cast<const T*>(probs), seq, scale, drop_prob, keep_scale,
        drop_seed);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
