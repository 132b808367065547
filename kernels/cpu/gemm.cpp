// GEMM through OpenBLAS, and the linear layer built on it.
#include <cblas.h>

#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  cblas_sgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                  const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                  double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

template <class T>
void linear_forward(T* out, const T* in, const T* weight, const T* bias, int64_t m, int64_t n,
                    int64_t k) {
  if (bias != nullptr) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] = bias[j];
  }
  gemm<T>(false, true, m, n, k, T(1), in, k, weight, k, bias ? T(1) : T(0), out, n);
}

template <class T>
void linear_backward(T* d_in, T* d_weight, T* d_bias, const T* d_out, const T* in,
                     const T* weight, int64_t m, int64_t n, int64_t k, bool accumulate_d_in,
                     bool accumulate_params) {
  if (d_in != nullptr)
    gemm<T>(false, false, m, k, n, T(1), d_out, n, weight, k, accumulate_d_in ? T(1) : T(0),
            d_in, k);
  gemm<T>(true, false, n, k, m, T(1), d_out, n, in, k, accumulate_params ? T(1) : T(0), d_weight, k);
  if (d_bias != nullptr) {
    if (!accumulate_params) std::fill(d_bias, d_bias + n, T(0));  // then the same sums in the same order
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) d_bias[j] += d_out[i * n + j];
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*,
                                     int64_t, int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t, bool, bool);

}  // namespace mics::cpu
