// Element-wise kernels: cast, add, scale, GELU (erf and tanh forms, the CPU backend's
// formulas evaluated in fp32), dropout (the CPU backend's counter-based mask), and the
// row broadcast used for a bias. Grid-stride loops over 64-bit indices; `add` on a single
// dtype moves 16 bytes per load when every pointer is 16-byte aligned.
#include <cmath>

#include "kernels/counter_hash.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/launch.h"

namespace mics::cuda {
namespace {

// The CPU backend's constants, rounded to fp32 as the CPU's float instantiation does.
constexpr float kInvSqrt2 = static_cast<float>(0.70710678118654752440);
constexpr float kInvSqrt2Pi = static_cast<float>(0.39894228040143267794);  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = static_cast<float>(0.79788456080286535588);  // sqrt(2/pi)
constexpr float kTanhC = static_cast<float>(0.044715);
constexpr float kTanhC3 = static_cast<float>(3 * 0.044715);

template <class O, class I>
__global__ void cast_kernel(O* out, const I* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<O>(to_f(in[i]));
}

template <class O, class A, class B>
__global__ void add_kernel(O* out, const A* a, const B* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<O>(to_f(a[i]) + to_f(b[i]));
}

// Same as add_kernel for one dtype, 16 bytes (16 / sizeof(T) elements) per access; the
// caller checked 16-byte alignment of every pointer. The tail is done element-wise.
template <class T>
__global__ void add_vec_kernel(T* out, const T* a, const T* b, int64_t n) {
  constexpr int kPer = 16 / sizeof(T);
  const int64_t vectors = n / kPer;
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vectors;
       v += int64_t(gridDim.x) * blockDim.x) {
    uint4 ua = reinterpret_cast<const uint4*>(a)[v];
    const uint4 ub = reinterpret_cast<const uint4*>(b)[v];
    T* ea = reinterpret_cast<T*>(&ua);
    const T* eb = reinterpret_cast<const T*>(&ub);
#pragma unroll
    for (int k = 0; k < kPer; ++k) ea[k] = from_f<T>(to_f(ea[k]) + to_f(eb[k]));
    reinterpret_cast<uint4*>(out)[v] = ua;
  }
  const int64_t tail = vectors * kPer + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (tail < n) out[tail] = from_f<T>(to_f(a[tail]) + to_f(b[tail]));
}

// x *= alpha in double, one rounding to T: the CPU's static_cast<T>(x * alpha).
template <class T>
__global__ void scale_kernel(T* x, int64_t n, double alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_d<T>(static_cast<double>(to_f(x[i])) * alpha);
}

template <class T>
__global__ void gelu_forward_kernel(T* out, const T* in, int64_t n, bool tanh_form) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_f(in[i]);
    float y;
    if (!tanh_form) {
      y = 0.5f * x * (1.0f + erff(x * kInvSqrt2));
    } else {
      // 0.5 (1 + tanh(u)) = sigmoid(2u), as the CPU writes it.
      const float u = kSqrt2OverPi * (x + kTanhC * x * x * x);
      y = x / (1.0f + expf(-2.0f * u));
    }
    out[i] = from_f<T>(y);
  }
}

template <class T>
__global__ void gelu_backward_kernel(T* d_in, const T* d_out, const T* in, int64_t n,
                                     bool tanh_form) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_f(in[i]);
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
    d_in[i] = from_f<T>(to_f(d_out[i]) * d);  // d_in may alias d_out: same index
  }
}

template <class T>
__global__ void dropout_kernel(T* out, const T* in, int64_t n, float prob, float keep_scale,
                               uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = dropout_keep(seed, static_cast<uint64_t>(i), prob) ? from_f<T>(to_f(in[i]) * keep_scale)
                                                                : from_f<T>(0.0f);
}

template <class T>
__global__ void broadcast_rows_kernel(T* out, const T* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = bias[i % cols];
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void launch_cast(DType out_t, void* out, DType in_t, const void* in, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("cast", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("cast", in_t, [&](auto i) {
      using I = decltype(i);
      cast_kernel<O, I><<<grid_for(n), kThreads, 0, s>>>(static_cast<O*>(out),
                                                          static_cast<const I*>(in), n);
      MICS_CUDA_CHECK_LAUNCH();
    });
  });
}

void launch_add(DType out_t, void* out, DType a_t, const void* a, DType b_t, const void* b,
                int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (out_t == a_t && out_t == b_t && aligned16(out) && aligned16(a) && aligned16(b)) {
    dispatch("add", out_t, [&](auto t) {
      using T = decltype(t);
      const int64_t vectors = n / (16 / int64_t(sizeof(T)));
      add_vec_kernel<T><<<grid_for(vectors > 0 ? vectors : 1), kThreads, 0, s>>>(
          static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), n);
      MICS_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  dispatch("add", out_t, [&](auto o) {
    using O = decltype(o);
    dispatch("add", a_t, [&](auto x) {
      using A = decltype(x);
      dispatch("add", b_t, [&](auto y) {
        using B = decltype(y);
        add_kernel<O, A, B><<<grid_for(n), kThreads, 0, s>>>(
            static_cast<O*>(out), static_cast<const A*>(a), static_cast<const B*>(b), n);
        MICS_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

void launch_scale(DType t, void* x, int64_t n, double alpha, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("scale", t, [&](auto v) {
    using T = decltype(v);
    scale_kernel<T><<<grid_for(n), kThreads, 0, s>>>(static_cast<T*>(x), n, alpha);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_gelu_forward(DType t, void* out, const void* in, int64_t n, GeluKind kind,
                         cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_forward", t, [&](auto v) {
    using T = decltype(v);
    gelu_forward_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(in), n, kind == GeluKind::tanh);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_gelu_backward(DType t, void* d_in, const void* d_out, const void* in, int64_t n,
                          GeluKind kind, cudaStream_t s) {
  if (n <= 0) return;
  dispatch("gelu_backward", t, [&](auto v) {
    using T = decltype(v);
    gelu_backward_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        static_cast<T*>(d_in), static_cast<const T*>(d_out), static_cast<const T*>(in), n,
        kind == GeluKind::tanh);
    MICS_CUDA_CHECK_LAUNCH();
  });
}

void launch_dropout(DType t, void* out, const void* in, int64_t n, float prob, uint64_t seed,
                    cudaStream_t s) {
  if (n <= 0) return;
  const float keep_scale = 1.0f / (1.0f - prob);  // as the CPU's T(1) / (T(1) - T(p)), T = float
  dispatch("dropout", t, [&](auto v) {
    using T = decltype(v);
    dropout_kernel<T><<<grid_for(n), kThreads, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(in), n, prob, keep_scale, seed);
    MICS_CUDA_CHECK_LAUNCH();
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
