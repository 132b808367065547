#pragma once
// Column reductions over a row-major [rows, cols] matrix in two deterministic stages, for
// the linear layer's bias gradient and LayerNorm's gamma/beta gradients:
//   1. blocks of 32 columns x one chunk of rows sum their part in fp32, rows in a fixed
//      order, into partials[k][chunk][cols] (k: which of the kOutputs sums);
//   2. one thread per column adds that column's partials in chunk order to out_k[c].
// A single pass with one block per 32 columns leaves most of the GPU idle (80 blocks for a
// 2560-wide layer, 256 rows each); chunking the rows gives rows/kColumnChunkRows times as
// many blocks. No atomics: the same input gives the same bits on every run and device.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {

inline constexpr int kColumnRowThreads = 8;  // threads down the rows in a stage-1 block

// Stage 1. `term(r, c, sums)` adds row r's contribution to column c into sums[0..kOutputs).
template <int kOutputs, class Term>
__global__ void column_partials_kernel(float* partials, int64_t rows, int64_t cols,
                                       int64_t chunk_rows, Term term) {
  __shared__ float part[kOutputs][kColumnRowThreads][33];
  const int64_t c = blockIdx.x * int64_t(32) + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * chunk_rows;
  const int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
  float acc[kOutputs] = {};
  if (c < cols)
    for (int64_t r = begin + threadIdx.y; r < end; r += kColumnRowThreads) term(r, c, acc);
  for (int k = 0; k < kOutputs; ++k) part[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < cols)
    for (int k = 0; k < kOutputs; ++k) {
      float total = 0.0f;
      for (int y = 0; y < kColumnRowThreads; ++y) total += part[k][y][threadIdx.x];
      partials[(k * gridDim.y + chunk) * cols + c] = total;
    }
}

// Stage 2: out[k][c] += (or, without accumulate, =) the column's partials, in chunk order.
template <class T, int kOutputs>
struct ColumnOutputs {
  T* out[kOutputs];
};

template <class T, int kOutputs>
__global__ void column_fold_kernel(ColumnOutputs<T, kOutputs> outs, const float* partials,
                                   int64_t chunks, int64_t cols, bool accumulate) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols;
       c += int64_t(gridDim.x) * blockDim.x)
    for (int k = 0; k < kOutputs; ++k) {
      float total = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partials[(k * chunks + chunk) * cols + c];
      outs.out[k][c] = from_f<T>(accumulate ? to_f(outs.out[k][c]) + total : total);
    }
}

// Both stages on stream s; `partials` holds column_partials_floats(rows, cols, kOutputs).
template <class T, int kOutputs, class Term>
void launch_column_reduce(ColumnOutputs<T, kOutputs> outs, int64_t rows, int64_t cols,
                          float* partials, Term term, bool accumulate, cudaStream_t s) {
  const int64_t chunks = column_chunks(rows);
  const int64_t chunk_rows = (rows + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(chunks));
  column_partials_kernel<kOutputs><<<grid, dim3(32, kColumnRowThreads), 0, s>>>(
      partials, rows, cols, chunk_rows, term);
  MICS_CUDA_CHECK_LAUNCH();
  column_fold_kernel<T, kOutputs><<<grid_for(cols), kThreads, 0, s>>>(outs, partials, chunks, cols, accumulate);
  MICS_CUDA_CHECK_LAUNCH();
}

}  // namespace mics::cuda
