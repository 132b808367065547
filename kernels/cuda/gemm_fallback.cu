// A plain tiled GEMM for the products cuBLASLt declines (gemm_lt.h): row-major,
// C = alpha op(A) op(B) + beta C (+ bias[n] per row), strided batches over blockIdx.z,
// fp32 accumulation. 16 x 16 output tile per block, 16-wide K slices through shared memory.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/gemm_lt.h"

namespace mics::cuda {
namespace {

constexpr int kTile = 16;

template <class T>
__global__ void gemm_fallback_kernel(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                                     const T* a, int64_t lda, int64_t stride_a, const T* b,
                                     int64_t ldb, int64_t stride_b, T* c, int64_t ldc,
                                     int64_t stride_c, float alpha, float beta, const T* bias) {
  __shared__ float tile_a[kTile][kTile + 1];
  __shared__ float tile_b[kTile][kTile + 1];
  const int64_t batch = blockIdx.z;
  a += batch * stride_a;
  b += batch * stride_b;
  c += batch * stride_c;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = blockIdx.y * int64_t(kTile) + ty;  // of C
  const int64_t col = blockIdx.x * int64_t(kTile) + tx;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    // tile_a[ty][tx] = op(A)[row, k0 + tx]; tile_b[ty][tx] = op(B)[k0 + ty, col].
    const int64_t ka = k0 + tx, kb = k0 + ty;
    float va = 0.0f, vb = 0.0f;
    if (row < m && ka < k) va = to_f(trans_a ? a[ka * lda + row] : a[row * lda + ka]);
    if (col < n && kb < k) vb = to_f(trans_b ? b[col * ldb + kb] : b[kb * ldb + col]);
    tile_a[ty][tx] = va;
    tile_b[ty][tx] = vb;
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kTile; ++p) acc += tile_a[ty][p] * tile_b[p][tx];
    __syncthreads();
  }
  if (row < m && col < n) {
    float out = alpha * acc;
    if (beta != 0.0f) out += beta * to_f(c[row * ldc + col]);  // beta 0: C is not read
    if (bias != nullptr) out += to_f(bias[col]);
    c[row * ldc + col] = from_f<T>(out);
  }
}

}  // namespace

void launch_gemm_fallback(const GemmArgs& g, cudaStream_t s) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  if (g.batch > 65535) throw ShapeError("gemm fallback: batch above 65535");
  const dim3 block(kTile, kTile);
  const dim3 grid(static_cast<unsigned>((g.n + kTile - 1) / kTile),
                  static_cast<unsigned>((g.m + kTile - 1) / kTile), static_cast<unsigned>(g.batch));
  if (grid.y > 65535) throw ShapeError("gemm fallback: more than 65535 row tiles");
  dispatch("gemm", g.dtype, [&](auto v) {
    using T = decltype(v);
    gemm_fallback_kernel<T><<<grid, block, 0, s>>>(
        g.trans_a, g.trans_b, g.m, g.n, g.k, static_cast<const T*>(g.a), g.lda, g.stride_a,
        static_cast<const T*>(g.b), g.ldb, g.stride_b, static_cast<T*>(g.c), g.ldc, g.stride_c,
        g.alpha, g.beta, static_cast<const T*>(g.bias));
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
