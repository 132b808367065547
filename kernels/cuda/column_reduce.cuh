#pragma once
// Launches the two stages of a column reduction (column_reduce_kernels.cuh) on stream s:
// bias and LayerNorm parameter gradients, deterministic. Stage 1's grid is the column
// blocks x the chunks of rows (column_reduce_geometry.h: about 128 rows each), so that a
// 2560-wide layer of 4096 rows has 320 blocks rather than 10.
// device_common.cuh first: the kernels' header expects its element types.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
// (keep after device_common.cuh)
#include "kernels/cuda/column_reduce_kernels.cuh"

namespace mics::cuda {

// kVector: cols % 8 == 0 and the rows the term reads as packs (LayerNorm's d_out and in, the
// bias sums' x) 16-byte aligned; per-row scalars (mean, rstd) may lie anywhere. `partials`
// holds column_partials_floats(rows, cols, kOutputs) floats.
template <bool kVector, class T, int kOutputs, class Term>
void launch_column_reduce(ColumnOutputs<T, kOutputs> outs, int64_t rows, int64_t cols,
                          float* partials, Term term, bool accumulate, cudaStream_t s) {
  const ColumnGrid g = column_grid(rows, cols);
  const dim3 grid(static_cast<unsigned>(g.column_blocks), static_cast<unsigned>(g.chunks));
  column_partials_kernel<kVector, kOutputs><<<grid, kColumnBlockThreads, 0, s>>>(partials, rows, cols,
                                                                                 g.chunk_rows, term);
  MICS_CUDA_CHECK_LAUNCH();
  column_fold_kernel<T, kOutputs><<<grid_for(cols), kThreads, 0, s>>>(outs, partials, g.chunks, cols, accumulate);
  MICS_CUDA_CHECK_LAUNCH();
}

}  // namespace mics::cuda
