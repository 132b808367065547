#pragma once
// The softmax cross-entropy kernel alone (cross_entropy.cu launches it): loss and gradient
// fused, one block per row, in fp32. The row is read twice and the gradient written once:
// the first pass keeps each thread's running maximum and its sum of exponentials rescaled
// as the maximum grows (one exponential per element), the block then combines them; the
// second pass writes softmax - onehot. Both passes move 16-byte packs of 8 elements between
// the row's unaligned head and tail (rows of a vocabulary like GPT-2's 50257 start at any
// element). d_logits may alias logits: the label's logit is read first, the first pass
// ends at a block barrier before any write, and each thread reads x[v] just before it
// writes d[v].
//
// No CUDA header: the includer provides the element types with to_f/from_f, uint4, expf,
// logf, fmaxf and atomicOr (device_common.cuh for nvcc; tests/emulation/cuda_emulator.h on
// the host, where tests/emulation/test_row_kernels_emulated.cpp runs it against float64).
#include <cfloat>
#include <cstdint>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/device_errors.h"
#include "kernels/cuda/vector_map_kernels.cuh"

namespace mics::cuda {

// Elements of a row before its first 16-byte boundary (all of them if it has none).
template <class T>
__device__ __forceinline__ int64_t elements_to_16_bytes(const T* row, int64_t n) {
  const int64_t head = static_cast<int64_t>(((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / sizeof(T));
  return head < n ? head : n;
}

// Calls f(v, x_v) for this thread's elements of row[0, n): the head and the tail one by
// one, the aligned middle in 8-element packs (f sees each element of a pack in turn).
template <class T, class F>
__device__ __forceinline__ void for_row_elements(const T* row, int64_t n, F&& f) {
  const int64_t head = elements_to_16_bytes(row, n);
  const int64_t packs = (n - head) / kMapWidth;
  const int64_t tail = head + packs * kMapWidth;
  for (int64_t v = threadIdx.x; v < head; v += blockDim.x) f(v, to_f(row[v]));
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const int64_t base = head + p * kMapWidth;
    const Pack8<T> pack = load_pack(row + base);
#pragma unroll
    for (int k = 0; k < kMapWidth; ++k) f(base + k, to_f(pack.v[k]));
  }
  for (int64_t v = tail + threadIdx.x; v < n; v += blockDim.x) f(v, to_f(row[v]));
}

// d[v] = g(v, x[v]) for this thread's elements, in packs where x and d share their
// alignment (the usual case: the same row of two like buffers, or one buffer in place).
template <class T, class G>
__device__ __forceinline__ void map_row(T* d, const T* x, int64_t n, G&& g) {
  const int64_t head = elements_to_16_bytes(x, n);
  if (head != elements_to_16_bytes(static_cast<const T*>(d), n)) {
    for (int64_t v = threadIdx.x; v < n; v += blockDim.x) d[v] = from_f<T>(g(v, to_f(x[v])));
    return;
  }
  const int64_t packs = (n - head) / kMapWidth;
  const int64_t tail = head + packs * kMapWidth;
  for (int64_t v = threadIdx.x; v < head; v += blockDim.x) d[v] = from_f<T>(g(v, to_f(x[v])));
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const int64_t base = head + p * kMapWidth;
    const Pack8<T> in = load_pack(x + base);
    Pack8<T> out;
#pragma unroll
    for (int k = 0; k < kMapWidth; ++k) out.v[k] = from_f<T>(g(base + k, to_f(in.v[k])));
    store_pack(d + base, out);
  }
  for (int64_t v = tail + threadIdx.x; v < n; v += blockDim.x) d[v] = from_f<T>(g(v, to_f(x[v])));
}

// losses[r] = logsumexp(logits[r]) - logits[r, label]; with d_logits, d_logits[r] =
// grad_scale (softmax(logits[r]) - onehot(label)). A negative label ignores the row (loss
// and gradient 0); a label >= vocab sets kBadLabel in *error and skips the row.
template <class T>
__global__ void cross_entropy_kernel(T* losses, T* d_logits, const T* logits, const int32_t* labels, int64_t vocab,
                                     float grad_scale, int* error) {
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
  // Running maximum m and sum s of exp(x - m); -FLT_MAX rather than -inf, so that a -inf
  // logit adds exp(-inf) = 0 instead of exp(-inf + inf).
  float m = -FLT_MAX, s = 0.0f;
  for_row_elements(x, vocab, [&](int64_t, float xv) {
    if (xv > m) {
      s = s * expf(m - xv) + 1.0f;
      m = xv;
    } else {
      s += expf(xv - m);
    }
  });
  const float mx = block_max(m, scratch);
  const float sum = block_sum(s * expf(m - mx), scratch);  // ends with a barrier: every read above is done
  const float log_sum = mx + logf(sum);
  if (threadIdx.x == 0) losses[r] = from_f<T>(log_sum - x_label);
  if (d == nullptr) return;
  map_row(d, x, vocab, [&](int64_t v, float xv) {
    return grad_scale * (expf(xv - log_sum) - (v == label ? 1.0f : 0.0f));
  });
}

}  // namespace mics::cuda
