// Element-wise kernels: cast, add, scale, GELU (erf and tanh forms, the CPU backend's
// formulas evaluated in fp32), dropout (the CPU backend's counter-based mask), and the
// row broadcast used for a bias. Grid-stride loops over 64-bit indices; the maps move 16
// bytes per access when every pointer is 16-byte aligned (vector_map.cuh).
#include <cmath>

#include "kernels/counter_hash.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/vector_map.cuh"

namespace mics::cuda {
namespace {

// The CPU backend's constants, rounded to fp32 as the CPU's float instantiation does.
constexpr float kInvSqrt2 = static_cast<float>(0.70710678118654752440);
constexpr float kInvSqrt2Pi = static_cast<float>(0.39894228040143267794);  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = static_cast<float>(0.79788456080286535588);  // sqrt(2/pi)
constexpr float kTanhC = static_cast<float>(0.044715);
constexpr float kTanhC3 = static_cast<float>(3 * 0.044715);

// The element functions below run under vector_map.cuh's maps (16-byte accesses when
// every pointer is 16-byte aligned).
template <class O>
struct CastOp {
  template <class I>
  __device__ O operator()(int64_t, I x) const { return from_f<O>(to_f(x)); }
};

template <class O>
struct AddOp {
  template <class A, class B>
  __device__ O operator()(int64_t, A a, B b) const { return from_f<O>(to_f(a) + to_f(b)); }
};

// x *= alpha in double, one rounding to T: the CPU's static_cast<T>(x * alpha).
template <class T>
struct ScaleOp {
  double alpha;
  __device__ T operator()(int64_t, T x) const { return from_d<T>(static_cast<double>(to_f(x)) * alpha); }
};

template <class T>
struct GeluForwardOp {
  bool tanh_form;
  __device__ T operator()(int64_t, T in) const {
    const float x = to_f(in);
    if (!tanh_form) return from_f<T>(0.5f * x * (1.0f + erff(x * kInvSqrt2)));
    // 0.5 (1 + tanh(u)) = sigmoid(2u), as the CPU writes it.
    const float u = kSqrt2OverPi * (x + kTanhC * x * x * x);
    return from_f<T>(x / (1.0f + expf(-2.0f * u)));
  }
};

// d_in = d_out * gelu'(in).
template <class T>
struct GeluBackwardOp {
  bool tanh_form;
  __device__ T operator()(int64_t, T d_out, T in) const {
    const float x = to_f(in);
    float d;
    if (!tanh_form) {
      const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
      d = cdf + x * pdf;
    } else {
      // d/dx [x s(2u)] = s + x 2 s (1 - s) u', s = sigmoid(2u).
      const float u = kSqrt2OverPi * (x + kTanhC * x * x * x);
      const float s = 1.0f / (1.0f + expf(-2.0f * u));
      const float du = kSqrt2OverPi * (1.0f + kTanhC3 * x * x);
      d = s + 2.0f * x * s * (1.0f - s) * du;
    }
    return from_f<T>(to_f(d_out) * d);
  }
};

// The CPU backend's counter-based mask: element i is kept by its flat index alone.
template <class T>
struct DropoutOp {
  float prob, keep_scale;
  uint64_t seed;
  __device__ T operator()(int64_t i, T in) const {
    return dropout_keep(seed, static_cast<uint64_t>(i), prob) ? from_f<T>(to_f(in) * keep_scale)
                                                                : from_f<T>(0.0f);
  }
};

template <class T>
__global__ void broadcast_rows_kernel(T* out, const T* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = bias[i % cols];
}

}  // namespace

void launch_cast(DType out_t, void* out, DType in_t, const void* in, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("cast", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("cast", in_t, [&](auto i) {
      using I = decltype(i);
      launch_unary_map(static_cast<O*>(out), static_cast<const I*>(in), n, CastOp<O>{}, s);
    });
  });
}

void launch_add(DType out_t, void* out, DType a_t, const void* a, DType b_t, const void* b,
                int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("add", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("add", a_t, [&](auto x) {
      using A = decltype(x);
      dispatch("add", b_t, [&](auto y) {
        using B = decltype(y);
        launch_binary_map(static_cast<O*>(out), static_cast<const A*>(a), static_cast<const B*>(b), n,
                          AddOp<O>{}, s);
      });
    });
  });
}

void launch_scale(DType t, void* x, int64_t n, double alpha, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("scale", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(x), static_cast<const T*>(x), n, ScaleOp<T>{alpha}, s);
  });
}

void launch_gelu_forward(DType t, void* out, const void* in, int64_t n, GeluKind kind,
                         cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_forward", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(out), static_cast<const T*>(in), n,
                     GeluForwardOp<T>{kind == GeluKind::tanh}, s);
  });
}

void launch_gelu_backward(DType t, void* d_in, const void* d_out, const void* in, int64_t n,
                          GeluKind kind, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_backward", t, [&](auto v) {
    using T = decltype(v);
    launch_binary_map(static_cast<T*>(d_in), static_cast<const T*>(d_out), static_cast<const T*>(in), n,
                      GeluBackwardOp<T>{kind == GeluKind::tanh}, s);
  });
}

void launch_dropout(DType t, void* out, const void* in, int64_t n, float prob, uint64_t seed,
                    cudaStream_t s) {
  if (n <= 0) return;
  const float keep_scale = 1.0f / (1.0f - prob);  // as the CPU's T(1) / (T(1) - T(p)), T = float
  dispatch("dropout", t, [&](auto v) {
    using T = decltype(v);
    launch_unary_map(static_cast<T*>(out), static_cast<const T*>(in), n, DropoutOp<T>{prob, keep_scale, seed}, s);
  });
}

void launch_broadcast_rows(DType t, void* out, const void* bias, int64_t rows, int64_t cols,
                           cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  dispatch("linear_forward", t, [&](auto v) {
    using T = decltype(v);
    broadcast_rows_kernel<T><<<grid_for(rows * cols), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(bias), rows, cols);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mics::cuda
