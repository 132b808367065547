#pragma once
// The index-driven row sums behind the embedding backward and scatter_add_rows, alone
// (embedding.cu launches them, with CUB's sort between the keys and the runs). Every
// destination row's sources are added in increasing source order onto its current value,
// in fp32, rounded once: the CPU backend's serial loop's order, so fp32 results are
// bit-identical to it and every run gives the same bits. No atomics but the error word's.
// No CUDA header: the includer provides the element types with to_f/from_f and atomicOr
// (device_common.cuh for nvcc; tests/emulation/cuda_emulator.h on the host, where
// tests/emulation/test_index_add_emulated.cpp runs them against the CPU backend).
#include <cstdint>

namespace mics::cuda {

inline constexpr int kIndexAddThreads = 256;    // columns per block
inline constexpr int kRunStartsPerBlock = 16;   // sorted positions a block looks at
inline constexpr int kRunLoadsInFlight = 32;    // source rows a thread loads before adding them

// keys[r] = destination row of source row r, values[r] = r. A destination outside
// [0, dst_rows) (negative ones included) becomes dst_rows: such rows sort after every valid
// one into a single run, which sets the error bit, and the sort needs only the bits of
// dst_rows (2 for BERT's token types, 15 for its vocabulary, rather than 32).
// The key bits the sort needs: those of dst_rows, the largest key (at least 1).
inline int index_key_bits(int64_t dst_rows) {
  int bits = 1;
  while (bits < 32 && (uint64_t{1} << bits) <= static_cast<uint64_t>(dst_rows)) ++bits;
  return bits;
}

template <class Index>
__global__ void index_keys_kernel(uint32_t* keys, int32_t* values, const Index* rows, int64_t n, int64_t dst_rows) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = rows[r];
    keys[r] = static_cast<uint32_t>(d >= 0 && d < dst_rows ? d : dst_rows);
    values[r] = static_cast<int32_t>(r);
  }
}

// Grid (ceil(n / kRunStartsPerBlock), column tiles), kIndexAddThreads threads: block (b, t)
// looks at sorted positions [b * kRunStartsPerBlock, ...) and, for each that starts a run of
// equal keys, adds the run's source rows (values[i..end), in order: the sort is stable) to
// the destination row, for tile t's columns. Few blocks (one per sorted position left most
// of a grid of 80k blocks exiting at once), and a run's rows loaded kRunLoadsInFlight at a
// time: BERT's two token types make runs of ~2048 rows, walked by one thread per column
// (the run's rows stay in one thread: the CPU's order).
template <class T>
__global__ void __launch_bounds__(kIndexAddThreads)
    index_add_runs_kernel(T* dst, int64_t dst_rows, const T* src, const uint32_t* keys, const int32_t* values,
                          int64_t n, int64_t cols, int* error, int error_bit) {
  const int64_t c = blockIdx.y * int64_t(kIndexAddThreads) + threadIdx.x;
  const int64_t first = blockIdx.x * int64_t(kRunStartsPerBlock);
  const int64_t last = first + kRunStartsPerBlock < n ? first + kRunStartsPerBlock : n;
  for (int64_t i = first; i < last; ++i) {
    const uint32_t d = keys[i];
    if (i > 0 && keys[i - 1] == d) continue;  // not the start of a run
    if (d >= dst_rows) {  // the out-of-range rows' run (index_keys_kernel)
      if (threadIdx.x == 0 && blockIdx.y == 0) atomicOr(error, error_bit);
      continue;
    }
    // The run's end: outward from i (1, 2, 4 ... ahead: one load for the usual run of a
    // row or two), then halving between the last equal key and the first other one.
    int64_t lo = i, hi = n;
    for (int64_t step = 1;; step *= 2) {
      if (lo + step >= n) break;
      if (keys[lo + step] != d) {
        hi = lo + step;
        break;
      }
      lo += step;
    }
    while (lo + 1 < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (keys[mid] == d) lo = mid; else hi = mid;
    }
    if (c >= cols) continue;
    T* out = dst + static_cast<int64_t>(d) * cols + c;
    float acc = to_f(*out);
    // kRunLoadsInFlight rows loaded, then added in order (only those in the run: adding a
    // 0 would turn -0 into +0).
    for (int64_t j = i; j < hi; j += kRunLoadsInFlight) {
      const int64_t count = hi - j < kRunLoadsInFlight ? hi - j : kRunLoadsInFlight;
      float v[kRunLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kRunLoadsInFlight; ++u)
        if (u < count) v[u] = to_f(src[static_cast<int64_t>(values[j + u]) * cols + c]);
#pragma unroll
      for (int u = 0; u < kRunLoadsInFlight; ++u)
        if (u < count) acc += v[u];
    }
    *out = from_f<T>(acc);
  }
}

// The position table's gradient: source row r goes to row r % seq, so destination p's
// sources are p, p + seq, ... (increasing: the sorted order) and no sort is needed. One
// thread per destination element, over min(seq, n) rows; rows at or past dst_rows set the
// error bit.
template <class T>
__global__ void strided_rows_add_kernel(T* dst, int64_t dst_rows, const T* src, int64_t n, int64_t seq,
                                        int64_t cols, int* error, int error_bit) {
  const int64_t rows = seq < n ? seq : n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * cols;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / cols, c = e % cols;
    if (p >= dst_rows) {
      if (c == 0) atomicOr(error, error_bit);
      continue;
    }
    float acc = to_f(dst[e]);
#pragma unroll 8
    for (int64_t r = p; r < n; r += seq) acc += to_f(src[r * cols + c]);
    dst[e] = from_f<T>(acc);
  }
}

}  // namespace mics::cuda
