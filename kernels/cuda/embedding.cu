// Embedding lookup (token + position (+ token type)), and the index-driven row updates
// behind its backward and behind gather_rows / scatter_add_rows.
//
// Backward without atomics: rows that hit the same destination row are summed by ONE
// block, the one of the first such source row, in increasing source order, starting from
// the destination's current value: the order of the CPU backend's serial loop, so fp32
// results are bit-identical to it and every run gives the same bits. That block first
// lists the source rows aimed at its destination (one pass over the index array, the list
// in shared memory, kept in source order by a ballot), then adds those rows column by
// column. Index reads are O(n^2) over the whole launch (each block scans the array once
// to find earlier rows and once for its list: 2 x 16M int reads from L2 for n = 4096);
// row data are read once. More than kMatchChunk matches (a padding id that fills half
// the batch, say) are added in chunks, writing the destination back between chunks: in
// fp32 that changes no bits; in half precision it rounds once per chunk.
//
// Bad indices (outside the table) set a bit in the backend's device error word and are
// skipped; the backend throws at its next synchronising call.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

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

__device__ __forceinline__ int64_t index_of(const int32_t* rows, int64_t seq, int64_t r) {
  return rows != nullptr ? static_cast<int64_t>(rows[r]) : r % seq;
}

constexpr int kIndexAddThreads = 256;
constexpr int kMatchChunk = 2048;

// dst[d, :] += src[q, :] for the listed source rows q, in list order.
template <class T>
__device__ void add_listed_rows(T* dst_row, const T* src, const int32_t* list, int count,
                                int64_t cols) {
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = to_f(dst_row[c]);
    for (int j = 0; j < count; ++j) acc += to_f(src[static_cast<int64_t>(list[j]) * cols + c]);
    dst_row[c] = from_f<T>(acc);
  }
}

template <class T>
__global__ void __launch_bounds__(kIndexAddThreads)
    index_add_kernel(T* dst, int64_t dst_rows, const T* src, const int32_t* rows, int64_t seq,
                     int64_t n, int64_t cols, int* error, int error_bit) {
  constexpr int kWarps = kIndexAddThreads / 32;
  __shared__ int32_t list[kMatchChunk];
  __shared__ int warp_hits[kWarps];
  const int64_t r = blockIdx.x;
  const int64_t d = index_of(rows, seq, r);
  if (d < 0 || d >= dst_rows) {
    if (threadIdx.x == 0) atomicOr(error, error_bit);
    return;  // uniform across the block
  }
  // Is an earlier source row aimed at the same destination? Then that row's block owns it.
  int earlier = 0;
  for (int64_t q = threadIdx.x; q < r; q += blockDim.x) earlier |= index_of(rows, seq, q) == d;
  if (__syncthreads_or(earlier)) return;

  T* dst_row = dst + d * cols;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int count = 0;  // entries of `list` in use; the same in every thread
  for (int64_t base = r; base < n; base += kIndexAddThreads) {
    const int64_t q = base + threadIdx.x;
    const bool hit = q < n && index_of(rows, seq, q) == d;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, hits = 0;  // hits of lower warps; of the whole block in this pass
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_hits[w] : 0;
      hits += warp_hits[w];
    }
    if (count + hits > kMatchChunk) {  // full: add what is listed, start a new list
      add_listed_rows(dst_row, src, list, count, cols);
      count = 0;
      __syncthreads();
    }
    if (hit) list[count + before + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(q);
    count += hits;
    __syncthreads();  // the list is complete for this pass; warp_hits may be rewritten
  }
  add_listed_rows(dst_row, src, list, count, cols);
}

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

void launch_index_add(DType t, void* dst, int64_t dst_rows, const void* src,
                      const int32_t* rows, int64_t seq, int64_t n, int64_t cols, int* error,
                      int error_bit, cudaStream_t s) {
  if (n <= 0 || cols <= 0) return;
  dispatch("index_add", t, [&](auto v) {
    using T = decltype(v);
    index_add_kernel<T><<<static_cast<unsigned>(n), kIndexAddThreads, 0, s>>>(
        static_cast<T*>(dst), dst_rows, static_cast<const T*>(src), rows, seq, n, cols, error,
        error_bit);
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
