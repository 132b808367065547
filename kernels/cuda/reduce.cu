// Reductions: sum and sum of squares (accumulated in double, returned to the host), the
// count of NaN/Inf entries (reduce_kernels.cuh), and column sums (the linear layer's bias
// gradient, through column_reduce.cuh). All are deterministic: fixed grids, fixed
// combination order, no atomics.
#include "kernels/cuda/column_reduce.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/reduce_kernels.cuh"

namespace mics::cuda {
namespace {

unsigned partial_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kReducePartials ? blocks : kReducePartials);
}

// Partials of `blocks` blocks, then one block folds them into *result (0 when n is 0).
void queue_sum(DType t, const void* x, int64_t n, bool squares, unsigned blocks, double* partials,
               double* result, cudaStream_t s) {
  if (n <= 0) blocks = 0;
  if (blocks > 0)
    dispatch(squares ? "sum_squares" : "sum", t, [&](auto v) {
      using T = decltype(v);
      const T* in = static_cast<const T*>(x);
      if (aligned16(x))
        sum_partials_kernel<true, T><<<blocks, kThreads, 0, s>>>(in, n, squares, partials);
      else
        sum_partials_kernel<false, T><<<blocks, kThreads, 0, s>>>(in, n, squares, partials);
      MICS_CUDA_CHECK_LAUNCH();
    });
  fold_partials_kernel<double><<<1, kReducePartials, 0, s>>>(partials, static_cast<int>(blocks), result);
  MICS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void queue_device_sum(DType t, const void* x, int64_t n, bool squares, double* partials, double* result,
                      cudaStream_t s) {
  const int64_t blocks = (n + kQueuedSumBlockElements - 1) / kQueuedSumBlockElements;
  queue_sum(t, x, n, squares, static_cast<unsigned>(blocks < kQueuedPartials ? blocks : kQueuedPartials), partials,
            result, s);
}

double device_sum(DType t, const void* x, int64_t n, bool squares, double* partials,
                  double* result, cudaStream_t s) {
  if (n <= 0) return 0.0;
  queue_sum(t, x, n, squares, partial_blocks(n), partials, result, s);
  double host = 0;
  MICS_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, s));
  MICS_CUDA_CHECK(cudaStreamSynchronize(s));
  return host;
}

int64_t device_count_nonfinite(DType t, const void* x, int64_t n, unsigned long long* partials,
                               unsigned long long* result, cudaStream_t s) {
  if (n <= 0) return 0;
  const unsigned blocks = partial_blocks(n);
  dispatch("count_nonfinite", t, [&](auto v) {
    using T = decltype(v);
    const T* in = static_cast<const T*>(x);
    if (aligned16(x))
      nonfinite_partials_kernel<true, T><<<blocks, kThreads, 0, s>>>(in, n, partials);
    else
      nonfinite_partials_kernel<false, T><<<blocks, kThreads, 0, s>>>(in, n, partials);
    MICS_CUDA_CHECK_LAUNCH();
  });
  fold_partials_kernel<unsigned long long><<<1, kReducePartials, 0, s>>>(
      partials, static_cast<int>(blocks), result);
  MICS_CUDA_CHECK_LAUNCH();
  unsigned long long host = 0;
  MICS_CUDA_CHECK(
      cudaMemcpyAsync(&host, result, sizeof(host), cudaMemcpyDeviceToHost, s));
  MICS_CUDA_CHECK(cudaStreamSynchronize(s));
  return static_cast<int64_t>(host);
}

void launch_column_sums(DType t, void* sums, const void* x, int64_t rows, int64_t cols, bool accumulate,
                        float* partials, cudaStream_t s) {
  if (cols <= 0) return;
  // rows == 0 still runs (adds 0): the result must not depend on an early exit's rounding.
  dispatch("column_sums", t, [&](auto v) {
    using T = decltype(v);
    const ColumnValue<T> term{static_cast<const T*>(x), cols};
    if (cols % kMapWidth == 0 && aligned16(x))
      launch_column_reduce<true, T, 1>({{static_cast<T*>(sums)}}, rows, cols, partials, term, accumulate, s);
    else
      launch_column_reduce<false, T, 1>({{static_cast<T*>(sums)}}, rows, cols, partials, term, accumulate, s);
  });
}

}  // namespace mics::cuda
