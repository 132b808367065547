#pragma once
// The element-wise map kernels alone (vector_map.cuh launches them): a thread moves 8
// elements per step, as one 16-byte access for a half-precision tensor or two for fp32
// (kVector, every pointer 16-byte aligned), or one element per step otherwise; the n % 8
// tail is done element by element. No CUDA header: the includer provides the element types
// with to_f/from_f and uint4 (device_common.cuh for nvcc, tests/emulation/cuda_emulator.h
// on the host, where tests/emulation/test_row_kernels_emulated.cpp runs them).
#include <cstdint>

namespace mics::cuda {

inline constexpr int kMapWidth = 8;

template <class T>
struct alignas(16) Pack8 {
  T v[kMapWidth];
};

template <class T>
__device__ __forceinline__ Pack8<T> load_pack(const T* p) {
  Pack8<T> r;
#pragma unroll
  for (int w = 0; w < int(sizeof(Pack8<T>) / 16); ++w)
    reinterpret_cast<uint4*>(&r)[w] = reinterpret_cast<const uint4*>(p)[w];
  return r;
}

template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack8<T>& r) {
#pragma unroll
  for (int w = 0; w < int(sizeof(Pack8<T>) / 16); ++w)
    reinterpret_cast<uint4*>(p)[w] = reinterpret_cast<const uint4*>(&r)[w];
}

// Pack p (elements 8p .. 8p+7) of a row of `cols` elements. kVector: the pack is whole and
// 16-byte aligned, one or two 16-byte accesses; otherwise element by element, the part
// past `cols` read as 0 (and not written).
template <bool kVector, class T>
__device__ __forceinline__ Pack8<T> load_row_pack(const T* row, int64_t p, int64_t cols) {
  if constexpr (kVector) {
    return load_pack(row + p * kMapWidth);
  } else {
    Pack8<T> r;
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      const int64_t c = p * kMapWidth + j;
      r.v[j] = c < cols ? row[c] : from_f<T>(0.0f);
    }
    return r;
  }
}

template <bool kVector, class T>
__device__ __forceinline__ void store_row_pack(T* row, int64_t p, int64_t cols, const Pack8<T>& r) {
  if constexpr (kVector) {
    store_pack(row + p * kMapWidth, r);
  } else {
#pragma unroll
    for (int j = 0; j < kMapWidth; ++j) {
      const int64_t c = p * kMapWidth + j;
      if (c < cols) row[c] = r.v[j];
    }
  }
}

// out[i] = f(i, x[i]...) for i < n, over one or more inputs. `out` may alias any input
// (each element is read before it is written, by the same thread).
template <bool kVector, class O, class F, class... X>
__global__ void map_kernel(O* out, int64_t n, F f, const X*... x) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if constexpr (kVector) {
    const int64_t packs = n / kMapWidth;
    for (int64_t p = first; p < packs; p += stride) {
      const int64_t base = p * kMapWidth;
      // Every input's pack loaded once, then the 8 results stored as one pack.
      auto map_pack = [&](const Pack8<X>&... in) {
        Pack8<O> r;
#pragma unroll
        for (int k = 0; k < kMapWidth; ++k) r.v[k] = f(base + k, in.v[k]...);
        store_pack(out + base, r);
      };
      map_pack(load_pack(x + base)...);
    }
    first += packs * kMapWidth;
  }
  for (int64_t i = first; i < n; i += stride) out[i] = f(i, x[i]...);
}

}  // namespace mics::cuda
