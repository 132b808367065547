// LayerNorm forward (alone, or after the residual add it follows, in one pass) and
// backward: the row kernels of layernorm_kernels.cuh, mean/rstd stored in the op's dtype or
// in fp32 (S below). The parameter gradients are column reductions (column_reduce.cuh):
// fixed order, deterministic, no atomics.
#include "kernels/cuda/column_reduce.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/layernorm_kernels.cuh"

namespace mics::cuda {
namespace {

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
                               bool accumulate_d_in, bool accumulate_params, float* partials, cudaStream_t s) {
  // No rows still runs the parameter gradients' sums: zeros written, or nothing added.
  if (cols <= 0) return;
  check_row_width("layernorm_backward", cols);
  dispatch_stats("layernorm_backward", t, stats_t, [&](auto tv, auto sv) {
    using T = decltype(tv);
    using S = decltype(sv);
    // Parameter gradients first: they read d_out, which d_in must not alias anyway.
    const LayerNormParamTerms<T, S> terms{static_cast<const T*>(d_out), static_cast<const T*>(in),
                                          static_cast<const S*>(mean), static_cast<const S*>(rstd), cols};
    const ColumnOutputs<T, 2> params{{static_cast<T*>(d_gamma), static_cast<T*>(d_beta)}};
    with_row_access(cols, {d_out, in}, [&](auto vector) {
      launch_column_reduce<decltype(vector)::value>(params, rows, cols, partials, terms, accumulate_params, s);
    });
    if (rows <= 0) return;
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
