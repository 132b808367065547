// Embedding lookup (token + position (+ token type)), and the index-driven row updates
// behind its backward and behind gather_rows / scatter_add_rows.
//
// Backward without atomics (embedding_kernels.cuh): the source rows are sorted by
// destination with CUB's stable radix sort (equal destinations keep increasing source
// order), and the first position of each run of equal destinations sums that run onto the
// destination's current value: the order of the CPU backend's serial loop, so fp32 results
// are bit-identical to it and every run gives the same bits. The position table needs no
// sort (row r goes to r % seq, already in order).
//
// Bad indices (outside the table) set a bit in the backend's device error word and are
// skipped; the backend throws at its next synchronising call.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
// (keep after device_common.cuh)
#include "kernels/cuda/embedding_kernels.cuh"

namespace mics::cuda {
namespace {

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const int32_t* type_ids,
                                         const T* tok, const T* pos, const T* type, int64_t rows,
                                         int64_t cols, int64_t seq, int64_t vocab, int64_t types,
                                         int* error) {
  const int64_t n = rows * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, c = e % cols;
    const int32_t id = ids[r];
    if (id < 0 || id >= vocab) {
      if (c == 0) atomicOr(error, kBadTokenId);
      continue;
    }
    float v = to_f(tok[id * cols + c]) + to_f(pos[(r % seq) * cols + c]);
    if (type != nullptr) {
      const int32_t ty = type_ids[r];
      if (ty < 0 || ty >= types) {
        if (c == 0) atomicOr(error, kBadTypeId);
        continue;
      }
      v += to_f(type[ty * cols + c]);
    }
    out[e] = from_f<T>(v);
  }
}

// The scratch layout: keys and values before and after the sort, then CUB's temporary
// storage, each at a 256-byte boundary.
struct IndexAddScratch {
  size_t keys_in = 0, keys_out = 0, values_in = 0, values_out = 0, temp = 0, temp_bytes = 0, total = 0;
  explicit IndexAddScratch(int64_t n) {
    auto up = [](size_t x) { return (x + 255) / 256 * 256; };
    const size_t ints = up(static_cast<size_t>(n) * 4);
    keys_out = ints, values_in = 2 * ints, values_out = 3 * ints, temp = 4 * ints;
    MICS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, static_cast<const uint32_t*>(nullptr),
                                                    static_cast<uint32_t*>(nullptr),
                                                    static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), n));
    total = temp + up(temp_bytes);
  }
};

template <class T>
__global__ void gather_rows_kernel(T* out, const T* in, const int32_t* rows, int64_t n,
                                   int64_t cols, int64_t in_rows, int* error) {
  const int64_t total = n * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, c = e % cols;
    const int32_t row = rows[i];
    if (row < 0 || row >= in_rows) {
      if (c == 0) atomicOr(error, kBadGatherRow);
      continue;
    }
    out[e] = in[row * cols + c];
  }
}

}  // namespace

void launch_embedding_forward(DType t, void* out, const int32_t* ids, const int32_t* type_ids,
                              const void* tok, const void* pos, const void* type, int64_t rows,
                              int64_t cols, int64_t seq, int64_t vocab, int64_t types,
                              int* error, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  dispatch("embedding_forward", t, [&](auto v) {
    using T = decltype(v);
    embedding_forward_kernel<T><<<grid_for(rows * cols), kThreads, 0, s>>>(
        static_cast<T*>(out), ids, type_ids, static_cast<const T*>(tok),
        static_cast<const T*>(pos), static_cast<const T*>(type), rows, cols, seq, vocab, types,
        error);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

size_t index_add_scratch_bytes(int64_t n) { return n > 0 ? IndexAddScratch(n).total : 0; }

void launch_index_add(DType t, void* dst, int64_t dst_rows, const void* src,
                      const int32_t* rows, int64_t seq, int64_t n, int64_t cols, void* scratch,
                      int* error, int error_bit, cudaStream_t s) {
  if (n <= 0 || cols <= 0) return;
  if (n > INT32_MAX) throw ShapeError("index_add: more than 2^31 source rows");
  if (dst_rows > INT32_MAX) throw ShapeError("index_add: a table of more than 2^31 - 1 rows (row ids are int32)");
  if (rows == nullptr) {  // row r to r % seq: in order already
    dispatch("index_add", t, [&](auto v) {
      using T = decltype(v);
      strided_rows_add_kernel<T><<<grid_for(std::min(seq, n) * cols), kThreads, 0, s>>>(
          static_cast<T*>(dst), dst_rows, static_cast<const T*>(src), n, seq, cols, error, error_bit);
      MICS_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const IndexAddScratch at(n);
  char* base = static_cast<char*>(scratch);
  auto* keys_in = reinterpret_cast<uint32_t*>(base + at.keys_in);
  auto* keys_out = reinterpret_cast<uint32_t*>(base + at.keys_out);
  auto* values_in = reinterpret_cast<int32_t*>(base + at.values_in);
  auto* values_out = reinterpret_cast<int32_t*>(base + at.values_out);
  index_keys_kernel<<<grid_for(n), kThreads, 0, s>>>(keys_in, values_in, rows, n, dst_rows);
  MICS_CUDA_CHECK_LAUNCH();
  // Keys are at most dst_rows: only its bits are sorted (fewer radix passes).
  const int end_bit = index_key_bits(dst_rows);
  size_t temp_bytes = at.temp_bytes;
  MICS_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(base + at.temp, temp_bytes, keys_in, keys_out,
                                                  values_in, values_out, n, 0, end_bit, s));
  dispatch("index_add", t, [&](auto v) {
    using T = decltype(v);
    const dim3 grid(static_cast<unsigned>((n + kRunStartsPerBlock - 1) / kRunStartsPerBlock),
                    static_cast<unsigned>((cols + kIndexAddThreads - 1) / kIndexAddThreads));
    index_add_runs_kernel<T><<<grid, kIndexAddThreads, 0, s>>>(
        static_cast<T*>(dst), dst_rows, static_cast<const T*>(src), keys_out, values_out, n, cols,
        error, error_bit);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_gather_rows(DType t, void* out, const void* in, const int32_t* rows, int64_t n,
                        int64_t cols, int64_t in_rows, int* error, cudaStream_t s) {
  if (n <= 0 || cols <= 0) return;
  dispatch("gather_rows", t, [&](auto v) {
    using T = decltype(v);
    gather_rows_kernel<T><<<grid_for(n * cols), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(in), rows, n, cols, in_rows, error);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
