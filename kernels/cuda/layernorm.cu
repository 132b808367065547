// LayerNorm forward (alone, or after the residual add it follows, in one pass) and
// backward. One block per row, the row held in registers (read once, 16-byte accesses
// where aligned); statistics and the backward's row means accumulated in fp32 (two passes
// over the registers for the variance, no E[x^2] - E[x]^2 cancellation). mean/rstd are stored in the op's dtype or in fp32 (S below). The
// parameter gradients are column reductions (column_reduce.cuh): fixed order,
// deterministic, no atomics.
#include "kernels/cuda/column_reduce.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/vector_map.cuh"

namespace mics::cuda {
namespace {

// A row lives in registers: each thread holds up to kRowPacks packs of 8 elements, pack p
// of the row in thread p % blockDim.x. kVector: the row's packs are 16-byte aligned and
// whole (cols % 8 == 0), so each is one or two 16-byte accesses; otherwise the same packs
// are read element by element and the tail pack is padded (padding never enters a sum).
// At most 512 threads per row: the backward holds ~96 registers per thread, and 1024 such
// threads would exceed a block's 64K registers.
constexpr int kRowPacks = 4;
constexpr int kMaxRowThreads = 512;
constexpr int64_t kMaxRowCols = int64_t(kMaxRowThreads) * kRowPacks * kMapWidth;

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

// Threads per row: the fewest (a warp at least) that keep each thread at kRowPacks packs.
int row_block_threads(int64_t cols) {
  const int64_t packs = (cols + kMapWidth - 1) / kMapWidth;
  int threads = 32;
  while (int64_t(threads) * kRowPacks < packs) threads *= 2;
  return threads;
}

void check_row_width(const char* op, int64_t cols) {
  if (cols > kMaxRowCols)
    throw ShapeError(std::string(op) + ": the CUDA backend normalises rows of at most " +
                     std::to_string(kMaxRowCols) + " elements, not " + std::to_string(cols));
}

// Calls f(std::bool_constant<kVector>) for the rows at hand.
template <class F>
void with_row_access(int64_t cols, std::initializer_list<const void*> pointers, F&& f) {
  bool vector = cols % kMapWidth == 0;
  for (const void* ptr : pointers) vector = vector && aligned16(ptr);
  if (vector)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// d_gamma[c] += sum_r dy[r,c] xhat[r,c]; d_beta[c] += sum_r dy[r,c]. Block (32, 16) as in
// reduce.cu's column sums.
// The gamma/beta gradients' terms of column_reduce.cuh: row r adds dy * xhat (gamma) and
// dy (beta) to column c.
template <class T, class S>
struct LayerNormParamTerms {
  const T* d_out;
  const T* in;
  const S* mean;
  const S* rstd;
  int64_t cols;
  __device__ void operator()(int64_t r, int64_t c, float* sums) const {
    const float dy = to_f(d_out[r * cols + c]);
    sums[0] += dy * ((to_f(in[r * cols + c]) - to_f(mean[r])) * to_f(rstd[r]));
    sums[1] += dy;
  }
};

// Calls f(T{}, S{}) with S = T or float.
template <class F>
void dispatch_stats(const char* op, DType t, DType stats_t, F&& f) {
  dispatch(op, t, [&](auto v) {
    using T = decltype(v);
    if (stats_t == t) {
      f(T{}, T{});
    } else if (stats_t == DType::f32) {
      f(T{}, float{});
    } else {
      throw ShapeError(std::string(op) + ": mean/rstd must be " + dtype_name(t) + " or fp32, not " +
                       dtype_name(stats_t));
    }
  });
}

}  // namespace

void launch_layernorm_forward(DType t, DType stats_t, void* out, void* mean, void* rstd,
                              const void* in, const void* gamma, const void* beta, int64_t rows,
                              int64_t cols, float eps, cudaStream_t s) {
  launch_add_layernorm_forward(t, stats_t, nullptr, out, mean, rstd, in, nullptr, gamma, beta, rows, cols, eps, s);
}

void launch_add_layernorm_forward(DType t, DType stats_t, void* sum, void* out, void* mean, void* rstd,
                                  const void* a, const void* b, const void* gamma, const void* beta,
                                  int64_t rows, int64_t cols, float eps, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const bool residual = b != nullptr;
  const char* op = residual ? "add_layernorm_forward" : "layernorm_forward";
  check_row_width(op, cols);
  dispatch_stats(op, t, stats_t, [&](auto tv, auto sv) {
    using T = decltype(tv);
    using S = decltype(sv);
    with_row_access(cols, {out, a, gamma, beta, residual ? sum : out, residual ? b : a}, [&](auto vector) {
      constexpr bool kVector = decltype(vector)::value;
      auto kernel = residual ? layernorm_forward_kernel<kVector, true, T, S> : layernorm_forward_kernel<kVector, false, T, S>;
      kernel<<<static_cast<unsigned>(rows), row_block_threads(cols), 0, s>>>(
          static_cast<T*>(out), static_cast<T*>(sum), static_cast<S*>(mean), static_cast<S*>(rstd),
          static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(gamma),
          static_cast<const T*>(beta), cols, eps);
      MICS_CUDA_CHECK_LAUNCH();
    });
  });
}

void launch_layernorm_backward(DType t, DType stats_t, void* d_in, void* d_gamma, void* d_beta,
                               const void* d_out, const void* in, const void* gamma,
                               const void* mean, const void* rstd, int64_t rows, int64_t cols,
                               bool accumulate_d_in, float* partials, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  check_row_width("layernorm_backward", cols);
  dispatch_stats("layernorm_backward", t, stats_t, [&](auto tv, auto sv) {
    using T = decltype(tv);
    using S = decltype(sv);
    // Parameter gradients first: they read d_out, which d_in must not alias anyway.
    launch_column_reduce<T, 2>({{static_cast<T*>(d_gamma), static_cast<T*>(d_beta)}}, rows, cols,
                               partials,
                               LayerNormParamTerms<T, S>{static_cast<const T*>(d_out),
                                                         static_cast<const T*>(in),
                                                         static_cast<const S*>(mean),
                                                         static_cast<const S*>(rstd), cols},
                               s);
    with_row_access(cols, {d_in, d_out, in, gamma}, [&](auto vector) {
      layernorm_backward_kernel<decltype(vector)::value, T, S>
          <<<static_cast<unsigned>(rows), row_block_threads(cols), 0, s>>>(
              static_cast<T*>(d_in), static_cast<const T*>(d_out), static_cast<const T*>(in),
              static_cast<const T*>(gamma), static_cast<const S*>(mean), static_cast<const S*>(rstd),
              cols, accumulate_d_in);
      MICS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace mics::cuda
