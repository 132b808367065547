// Scaled dot-product attention with padding and causal masks and dropout on the
// probabilities. Per (batch, head) pair: S = scale * Q K^T and O = P V through BLAS on
// strided views of qkv, the masked softmax in between. Dropout (off by default) applies
// its mask element by element instead of the P V product. The (batch, head) pairs are
// spread over OpenMP threads; OpenBLAS (its OpenMP build) runs single-threaded inside a
// parallel region, so the threads do not compete.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"

namespace mics::cpu {

namespace {
// Dropout index of probability (b, h, i, j): unique per element of probs[B,H,T,T].
inline uint64_t prob_index(int64_t bh, int64_t i, int64_t j, int64_t seq) {
  return static_cast<uint64_t>((bh * seq + i) * seq + j);
}

bool masked(const AttentionDims& d, const int32_t* key_keep, int64_t b, int64_t i, int64_t j) {
  return (d.causal && j > i) || (key_keep != nullptr && key_keep[b * d.seq + j] == 0);
}
}  // namespace

template <class T>
void attention_forward(T* out, T* probs, const T* qkv, const int32_t* key_keep,
                       const AttentionDims& d, DropoutSpec dropout) {
  const int64_t B = d.batch, S = d.seq, H = d.heads, D = d.head_dim, C = H * D;
  const T scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout.enabled() ? T(1) / (T(1) - T(dropout.prob)) : T(1);
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * 3 * C + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* p = probs + bh * S * S;
    T* o = out + b * S * C + h * D;
    gemm<T>(false, true, S, S, D, scale, q, 3 * C, k, 3 * C, T(0), p, S);
    for (int64_t i = 0; i < S; ++i) {
      T* row = p + i * S;
      T row_max = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        if (masked(d, key_keep, b, i, j)) row[j] = -std::numeric_limits<T>::infinity();
        row_max = std::max(row_max, row[j]);
      }
      if (row_max == -std::numeric_limits<T>::infinity()) {  // every key is padding
        std::fill(row, row + S, T(0));
        continue;
      }
      T denom = 0;
      for (int64_t j = 0; j < S; ++j) {
        row[j] = std::exp(row[j] - row_max);
        denom += row[j];
      }
      const T inv = T(1) / denom;
      for (int64_t j = 0; j < S; ++j) row[j] *= inv;
    }
    if (!dropout.enabled()) {
      gemm<T>(false, false, S, D, S, T(1), p, S, v, 3 * C, T(0), o, C);
      continue;
    }
    for (int64_t i = 0; i < S; ++i) {  // o_i = sum_j dropout(p_ij) v_j
      T* oi = o + i * C;
      std::fill(oi, oi + D, T(0));
      for (int64_t j = 0; j < S; ++j) {
        if (p[i * S + j] == T(0) || !dropout_keep(dropout.seed, prob_index(bh, i, j, S), dropout.prob))
          continue;
        const T w = p[i * S + j] * keep_scale;
        for (int64_t c = 0; c < D; ++c) oi[c] += w * v[j * 3 * C + c];
      }
    }
  }
}

template <class T>
void attention_backward(T* d_qkv, T* scratch, const T* d_out, const T* qkv, const T* probs,
                        const AttentionDims& d, DropoutSpec dropout) {
  const int64_t B = d.batch, S = d.seq, H = d.heads, D = d.head_dim, C = H * D;
  const T scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout.enabled() ? T(1) / (T(1) - T(dropout.prob)) : T(1);
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const T* q = qkv + b * S * 3 * C + h * D;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* dq = d_qkv + b * S * 3 * C + h * D;
    T* dk = dq + C;
    T* dv = dq + 2 * C;
    const T* p = probs + bh * S * S;
    const T* go = d_out + b * S * C + h * D;
    T* ds = scratch + bh * S * S;

    // dP' = dO V^T; dV = P'^T dO.
    gemm<T>(false, true, S, S, D, T(1), go, C, v, 3 * C, T(0), ds, S);
    if (!dropout.enabled()) {
      gemm<T>(true, false, S, D, S, T(1), p, S, go, C, T(0), dv, 3 * C);
    } else {
      for (int64_t j = 0; j < S; ++j) std::fill(dv + j * 3 * C, dv + j * 3 * C + D, T(0));
      for (int64_t i = 0; i < S; ++i)
        for (int64_t j = 0; j < S; ++j) {
          const bool keep = dropout_keep(dropout.seed, prob_index(bh, i, j, S), dropout.prob);
          ds[i * S + j] = keep ? ds[i * S + j] * keep_scale : T(0);  // dP from dP'
          if (!keep || p[i * S + j] == T(0)) continue;
          const T w = p[i * S + j] * keep_scale;
          for (int64_t c = 0; c < D; ++c) dv[j * 3 * C + c] += w * go[i * C + c];
        }
    }
    // Softmax backward: dS_ij = scale * P_ij (dP_ij - sum_k P_ik dP_ik).
    for (int64_t i = 0; i < S; ++i) {
      const T* prow = p + i * S;
      T* row = ds + i * S;
      T inner = 0;
      for (int64_t j = 0; j < S; ++j) inner += prow[j] * row[j];
      for (int64_t j = 0; j < S; ++j) row[j] = prow[j] * (row[j] - inner) * scale;
    }
    // dQ = dS K; dK = dS^T Q.
    gemm<T>(false, false, S, D, S, T(1), ds, S, k, 3 * C, T(0), dq, 3 * C);
    gemm<T>(true, false, S, D, S, T(1), ds, S, q, 3 * C, T(0), dk, 3 * C);
  }
}

template void attention_forward<float>(float*, float*, const float*, const int32_t*,
                                       const AttentionDims&, DropoutSpec);
template void attention_forward<double>(double*, double*, const double*, const int32_t*,
                                        const AttentionDims&, DropoutSpec);
template void attention_backward<float>(float*, float*, const float*, const float*, const float*,
                                        const AttentionDims&, DropoutSpec);
template void attention_backward<double>(double*, double*, const double*, const double*,
                                         const double*, const AttentionDims&, DropoutSpec);

}  // namespace mics::cpu
