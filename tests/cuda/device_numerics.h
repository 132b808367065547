#pragma once
// What the CUDA op tests share with the emulated-kernel tests (tests/emulation): the
// tolerance table per dtype, random inputs, and the attention cases' inputs and gradient
// check. Host-only: no CUDA header.
//
// u: unit roundoff of the dtype (2^-p, p the significand bits: 24, 8, 11).
// rtol: what one output rounding needs (u) with a margin: fp32 keeps the CPU tests' 1e-5
// (~170 u, covering the few fp32 roundings of an op); bf16 and fp16 get 2u (8e-3 and 1e-3):
// their kernels accumulate in fp32, so the final rounding to the dtype dominates.
// atol (per test): growth * u32 * scale for the fp32 arithmetic inside every kernel
// (accumulation is fp32 in all dtypes), plus roundings * u * scale for intermediates the
// op stores in the dtype (attention's scores and probabilities; none elsewhere).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/tensor.h"
#include "tests/cuda/host_dtype.h"
#include "tests/numerics/expect_close.h"

namespace mics::device_test {

struct DtypeTol {
  double u;
  double rtol;
};
inline DtypeTol kTol(DType t) {
  switch (t) {
    case DType::f32: return {0x1p-24, 1e-5};
    case DType::bf16: return {0x1p-8, 8e-3};
    case DType::f16: return {0x1p-11, 1e-3};
    default: throw std::logic_error("no tolerance for this dtype");
  }
}
inline constexpr double kU32 = 0x1p-24;

inline tol::Tol tol(DType t, double growth, double scale, double roundings = 0) {
  return {kTol(t).rtol, (growth * kU32 + roundings * kTol(t).u) * scale};
}

inline Vec random_vec(std::mt19937_64& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

inline double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// The largest |q . k| / sqrt(D) over every (batch, head, query, key) of qkv[B,T,3C].
inline double largest_score(const Vec& qkv, int64_t B, int64_t S, int64_t H, int64_t D) {
  const int64_t C = H * D;
  double smax = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = 0; j < S; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d)
            s += qkv[((b * S + i) * 3 + 0) * C + h * D + d] * qkv[((b * S + j) * 3 + 1) * C + h * D + d];
          smax = std::max(smax, std::abs(s) / std::sqrt(double(D)));
        }
  return smax;
}

// Key padding as tests/numerics/test_ops.cpp: batch 0 hides key S/2; the last batch hides
// key 0 and the last 3 (under a causal mask its query 0 then sees no key: lse -inf, output 0).
inline std::vector<int32_t> make_key_keep(int64_t batch, int64_t seq) {
  std::vector<int32_t> keep(static_cast<size_t>(batch * seq), 1);
  keep[static_cast<size_t>(seq / 2)] = 0;
  const int64_t last = (batch - 1) * seq;
  keep[static_cast<size_t>(last)] = 0;
  for (int64_t t = seq - 3; t < seq; ++t) keep[static_cast<size_t>(last + t)] = 0;
  return keep;
}

// d_qkv judged per part (q, k, v columns) against that part's largest gradient: fp32 as
// tests/numerics; in half precision dP' = dO V^T, dS and P' enter products rounded to the
// dtype (a few u each, on products of T terms that cancel: sqrt(T) of headroom).
inline void expect_qkv_gradient_close(const Vec& got, const Vec& want, DType t, int64_t C, int64_t S, double growth,
                                      double keep_scale) {
  const char* parts[3] = {"d_q", "d_k", "d_v"};
  for (int part = 0; part < 3; ++part) {
    Vec g, r;
    for (size_t e = 0; e < want.size(); ++e)
      if ((static_cast<int64_t>(e) % (3 * C)) / C == part) g.push_back(got[e]), r.push_back(want[e]);
    const double roundings = (part == 2 ? 4 : 8) * std::sqrt(double(S));
    expect_close(g, r, tol(t, 2 * growth, max_abs(r) * keep_scale, roundings), parts[part]);
  }
}

}  // namespace mics::device_test
