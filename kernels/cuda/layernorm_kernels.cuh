#pragma once
// The LayerNorm row kernels alone (layernorm.cu launches them, with the gamma/beta
// gradients as column reductions of LayerNormParamTerms below): forward, alone or after the
// residual add it follows, and the input gradient. One block per row, the row held in registers (read once, 16-byte
// accesses where aligned); statistics and the backward's row means in fp32 (two passes over
// the registers for the variance, no E[x^2] - E[x]^2 cancellation). No CUDA header: the
// includer provides the element types with to_f/from_f, uint4 and sqrtf (device_common.cuh
// for nvcc; tests/emulation/cuda_emulator.h on the host, where
// tests/emulation/test_row_kernels_emulated.cpp runs them against float64).
#include <cstdint>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/vector_map_kernels.cuh"

namespace mics::cuda {

// A row lives in registers: each thread holds up to kRowPacks packs of 8 elements, pack p
// of the row in thread p % blockDim.x. kVector: the row's packs are 16-byte aligned and
// whole (cols % 8 == 0), so each is one or two 16-byte accesses; otherwise the same packs
// are read element by element and the tail pack is padded (padding never enters a sum).
// At most 512 threads per row: the backward holds ~96 registers per thread, and 1024 such
// threads would exceed a block's 64K registers.
constexpr int kRowPacks = 4;
constexpr int kMaxRowThreads = 512;
constexpr int64_t kMaxRowCols = int64_t(kMaxRowThreads) * kRowPacks * kMapWidth;

template <bool kVector>
__device__ __forceinline__ bool in_row(int64_t p, int j, int64_t cols) {
  return kVector || p * kMapWidth + j < cols;
}

// out = LayerNorm(x) per row, x = in, or with kResidual x = a + b rounded to T and also
// stored to `sum` (the residual add before a LayerNorm, in the same pass). sum may alias
// a or b: each element is read before the same thread writes it.
template <bool kVector, bool kResidual, class T, class S>
__global__ void __launch_bounds__(kMaxRowThreads) layernorm_forward_kernel(T* out, T* sum, S* mean, S* rstd, const T* a, const T* b,
                                         const T* gamma, const T* beta, int64_t cols, float eps) {
  __shared__ float scratch[32];
  const int64_t packs = (cols + kMapWidth - 1) / kMapWidth, row = blockIdx.x * cols;
  float x[kRowPacks][kMapWidth];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < kRowPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t(k) * blockDim.x;
    if (p >= packs) continue;
    Pack8<T> v = load_row_pack<kVector>(a + row, p, cols);
    if constexpr (kResidual) {
      const Pack8<T> w = load_row_pack<kVector>(b + row, p, cols);
#pragma unroll
      for (int j = 0; j < kMapWidth; ++j) v.v[j] = from_f<T>(to_f(v.v[j]) + to_f(w.v[j]));
      store_row_pack<kVector>(sum + row, p, cols, v);
    }
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) s += (x[k][j] = to_f(v.v[j]));
  }
  const float mu = block_sum(s, scratch) / static_cast<float>(cols);
  // Two passes over the registers for the variance: no E[x^2] - E[x]^2 cancellation.
  float var = 0.0f;
#pragma unroll
  for (int k = 0; k < kRowPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t(k) * blockDim.x;
    if (p >= packs) continue;
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      const float d = x[k][j] - mu;
      if (in_row<kVector>(p, j, cols)) var += d * d;
    }
  }
  var = block_sum(var, scratch) / static_cast<float>(cols);
  const float rs = 1.0f / sqrtf(var + eps);
#pragma unroll
  for (int k = 0; k < kRowPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t(k) * blockDim.x;
    if (p >= packs) continue;
    const Pack8<T> g = load_row_pack<kVector>(gamma, p, cols), bb = load_row_pack<kVector>(beta, p, cols);
    Pack8<T> y;
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) y.v[j] = from_f<T>((x[k][j] - mu) * rs * to_f(g.v[j]) + to_f(bb.v[j]));
    store_row_pack<kVector>(out + row, p, cols, y);
  }
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = from_f<S>(mu);
    rstd[blockIdx.x] = from_f<S>(rs);
  }
}

// d_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = d_y * gamma; d_x = or +=.
template <bool kVector, class T, class S>
__global__ void __launch_bounds__(kMaxRowThreads) layernorm_backward_kernel(T* d_in, const T* d_out, const T* in, const T* gamma,
                                          const S* mean, const S* rstd, int64_t cols,
                                          bool accumulate) {
  __shared__ float scratch[32];
  const int64_t packs = (cols + kMapWidth - 1) / kMapWidth, row = blockIdx.x * cols;
  const float mu = to_f(mean[blockIdx.x]), rs = to_f(rstd[blockIdx.x]);
  float xhat[kRowPacks][kMapWidth], g[kRowPacks][kMapWidth];
  float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
  for (int k = 0; k < kRowPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t(k) * blockDim.x;
    if (p >= packs) continue;
    const Pack8<T> x = load_row_pack<kVector>(in + row, p, cols), dy = load_row_pack<kVector>(d_out + row, p, cols),
                   gm = load_row_pack<kVector>(gamma, p, cols);
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      xhat[k][j] = (to_f(x.v[j]) - mu) * rs;
      g[k][j] = to_f(dy.v[j]) * to_f(gm.v[j]);  // 0 in the padding: dy is
      sum_g += g[k][j];
      sum_gx += g[k][j] * xhat[k][j];
    }
  }
  const float mean_g = block_sum(sum_g, scratch) / static_cast<float>(cols);
  const float mean_gx = block_sum(sum_gx, scratch) / static_cast<float>(cols);
#pragma unroll
  for (int k = 0; k < kRowPacks; ++k) {
    const int64_t p = threadIdx.x + int64_t(k) * blockDim.x;
    if (p >= packs) continue;
    Pack8<T> dx;
    if (accumulate) dx = load_row_pack<kVector>(d_in + row, p, cols);
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      const float v = rs * (g[k][j] - mean_g - xhat[k][j] * mean_gx);
      dx.v[j] = from_f<T>(accumulate ? to_f(dx.v[j]) + v : v);
    }
    store_row_pack<kVector>(d_in + row, p, cols, dx);
  }
}

// The gamma/beta gradients as terms of a column reduction (column_reduce_kernels.cuh): row r
// adds dy * xhat to d_gamma's columns and dy to d_beta's.
template <class T, class S>
struct LayerNormParamTerms {
  const T* d_out;
  const T* in;
  const S* mean;
  const S* rstd;
  int64_t cols;
  template <bool kVector>
  __device__ __forceinline__ void add(int64_t r, int64_t p, float (&sums)[2][kMapWidth]) const {
    const Pack8<T> dy = load_row_pack<kVector>(d_out + r * cols, p, cols), x = load_row_pack<kVector>(in + r * cols, p, cols);
    const float mu = to_f(mean[r]), rs = to_f(rstd[r]);
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      const float g = to_f(dy.v[j]);
      sums[0][j] += g * ((to_f(x.v[j]) - mu) * rs);
      sums[1][j] += g;
    }
  }
};

// Threads per row: the fewest (a warp at least) that keep each thread at kRowPacks packs.
inline int row_block_threads(int64_t cols) {
  const int64_t packs = (cols + kMapWidth - 1) / kMapWidth;
  int threads = 32;
  while (int64_t(threads) * kRowPacks < packs) threads *= 2;
  return threads;
}

}  // namespace mics::cuda
