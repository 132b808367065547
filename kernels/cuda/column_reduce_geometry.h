#pragma once
// The launch geometry of the column reductions (column_reduce_kernels.cuh): shared by the
// launcher, the backend (which sizes the partials) and the emulated tests. Host-only, no
// CUDA header.
#include <cstdint>

namespace mics::cuda {

inline constexpr int kColumnPackThreads = 32;  // packs of 8 columns across a stage-1 block
inline constexpr int kColumnRowThreads = 8;    // threads down the rows
inline constexpr int kColumnBlockThreads = kColumnPackThreads * kColumnRowThreads;
inline constexpr int64_t kColumnBlockCols = int64_t(kColumnPackThreads) * 8;

// Stage 1 sums chunks of about kColumnChunkRows rows (at most kColumnMaxChunks chunks, at
// least 1: rows == 0 still writes zeros) into fp32 partials; stage 2 folds them.
inline constexpr int64_t kColumnChunkRows = 128;
inline constexpr int64_t kColumnMaxChunks = 64;

struct ColumnGrid {
  int64_t column_blocks;  // stage 1's grid.x
  int64_t chunks;         // stage 1's grid.y
  int64_t chunk_rows;     // rows per chunk (the last may have fewer)
};

inline ColumnGrid column_grid(int64_t rows, int64_t cols) {
  int64_t chunks = (rows + kColumnChunkRows - 1) / kColumnChunkRows;
  chunks = chunks < 1 ? 1 : (chunks > kColumnMaxChunks ? kColumnMaxChunks : chunks);
  return {(cols + kColumnBlockCols - 1) / kColumnBlockCols, chunks, (rows + chunks - 1) / chunks};
}

// The partials a reduction of `sums` outputs needs, in floats.
inline int64_t column_partials_floats(int64_t rows, int64_t cols, int sums) {
  return sums * cols * column_grid(rows, cols).chunks;
}

}  // namespace mics::cuda
