#pragma once
// The column-reduction kernels alone (column_reduce.cuh launches them): sums down the rows
// of a row-major [rows, cols] matrix, for the linear layer's bias gradient and LayerNorm's
// gamma/beta gradients, in two deterministic stages:
//   1. a block of 256 threads takes 256 columns (32 packs of 8) and one chunk of rows; each
//      thread sums one pack over every 8th row of the chunk in fp32, the 8 row-threads'
//      sums are added in a fixed order, into partials[k][chunk][cols] (k: which sum);
//   2. one thread per column adds that column's partials in chunk order to out_k[c].
// A thread reads 16 bytes per row and term (kVector: whole, aligned packs), or the same 8
// elements one by one otherwise. The first version read one 2-byte element per thread and
// row, eight times the load instructions per byte; LayerNorm's backward (these sums and the
// row kernel together) ran at ~1.7 TB/s on an H200 (2026-11-27). No atomics: the same
// input gives the same bits on every run and device, and both access paths give the same
// bits. No CUDA header: the includer provides the element types with to_f/from_f and uint4
// (device_common.cuh for nvcc; tests/emulation/cuda_emulator.h on the host, where
// tests/emulation/test_row_kernels_emulated.cpp runs them against float64).
#include <cstdint>

#include "kernels/cuda/column_reduce_geometry.h"
#include "kernels/cuda/vector_map_kernels.cuh"  // Pack8, load_row_pack, kMapWidth

namespace mics::cuda {

static_assert(kColumnBlockCols == kColumnPackThreads * kMapWidth, "a stage-1 thread sums one pack");
// After the barrier, the 8 row-threads' warps take the 8 elements of the packs, one each.
static_assert(kColumnRowThreads == kMapWidth, "stage 1 folds one pack element per row-thread warp");

// Stage 1, blocks of kColumnBlockThreads (one-dimensional), grid (column blocks, chunks) as
// column_grid (column_reduce_geometry.h) gives it.
// `term.add<kVector>(r, p, sums)` adds row r's contribution to the 8 columns of pack p into
// sums[0..kOutputs)[0..8) (padding past `cols` may add anything: it is never written out).
template <bool kVector, int kOutputs, class Term>
__global__ void __launch_bounds__(kColumnBlockThreads)
    column_partials_kernel(float* partials, int64_t rows, int64_t cols, int64_t chunk_rows, Term term) {
  // [k][row-thread][element of the pack][pack]: a warp's writes and reads are consecutive.
  __shared__ float part[kOutputs][kColumnRowThreads][kMapWidth][kColumnPackThreads];
  const int lane = static_cast<int>(threadIdx.x) % kColumnPackThreads;
  const int row_thread = static_cast<int>(threadIdx.x) / kColumnPackThreads;
  const int64_t packs = (cols + kMapWidth - 1) / kMapWidth;
  const int64_t p = blockIdx.x * int64_t(kColumnPackThreads) + lane;  // this thread's pack
  const int64_t chunk = blockIdx.y, begin = chunk * chunk_rows;
  const int64_t end = begin + chunk_rows < rows ? begin + chunk_rows : rows;
  float acc[kOutputs][kMapWidth] = {};
  if (p < packs) {
    // Unrolled so that several rows' loads are in flight; the additions stay in row order.
#pragma unroll 4
    for (int64_t r = begin + row_thread; r < end; r += kColumnRowThreads) term.template add<kVector>(r, p, acc);
  }
#pragma unroll
  for (int k = 0; k < kOutputs; ++k)
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) part[k][row_thread][j][lane] = acc[k][j];
  __syncthreads();
  // Thread t now owns column 8 * (block's first pack + t % 32) + t / 32 of the block.
  const int j = static_cast<int>(threadIdx.x) / kColumnPackThreads;
  const int64_t c = (blockIdx.x * int64_t(kColumnPackThreads) + lane) * kMapWidth + j;
  if (c >= cols) return;
  for (int k = 0; k < kOutputs; ++k) {
    float total = 0.0f;
    for (int y = 0; y < kColumnRowThreads; ++y) total += part[k][y][j][lane];
    partials[(k * int64_t(gridDim.y) + chunk) * cols + c] = total;
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

// The bias gradient's term: row r adds x[r, c] to column c.
template <class T>
struct ColumnValue {
  const T* x;
  int64_t cols;
  template <bool kVector>
  __device__ __forceinline__ void add(int64_t r, int64_t p, float (&sums)[1][kMapWidth]) const {
    const Pack8<T> v = load_row_pack<kVector>(x + r * cols, p, cols);
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) sums[0][j] += to_f(v.v[j]);
  }
};

}  // namespace mics::cuda
