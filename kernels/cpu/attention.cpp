// Scaled dot-product attention with padding and causal masks and dropout on the
// probabilities, materialised (probs[B,H,T,T] kept for the backward) or fused (only the
// rows' log-sum-exp kept; the backward recomputes the probabilities). Per (batch, head)
// pair: S = scale * Q K^T and O = P V through BLAS on strided views of qkv, the masked
// softmax in between. Dropout (off by default) applies its mask element by element instead
// of the P V product. The (batch, head) pairs are spread over OpenMP threads; OpenBLAS (its
// OpenMP build) runs single-threaded inside a parallel region, so the threads do not
// compete. The fused path works on one T x T buffer per thread.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

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

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// One (batch, head) pair's views into qkv, out and d_qkv.
template <class T>
struct Pair {
  int64_t bh, b, h;
  const T *q, *k, *v;
  int64_t ld;  // 3C
  Pair(const T* qkv, const AttentionDims& d, int64_t bh_) : bh(bh_), b(bh_ / d.heads), h(bh_ % d.heads) {
    const int64_t C = d.heads * d.head_dim;
    q = qkv + b * d.seq * 3 * C + h * d.head_dim;
    k = q + C;
    v = q + 2 * C;
    ld = 3 * C;
  }
};

// p[T,T] = the masked softmax of scale * Q K^T; lse[T] (optional) its rows' log-sum-exp.
template <class T, class L>
void softmax_scores(T* p, L* lse, const Pair<T>& x, const int32_t* key_keep, const AttentionDims& d) {
  const int64_t S = d.seq, D = d.head_dim;
  gemm<T>(false, true, S, S, D, T(1) / std::sqrt(T(D)), x.q, x.ld, x.k, x.ld, T(0), p, S);
  for (int64_t i = 0; i < S; ++i) {
    T* row = p + i * S;
    T row_max = kNegInf<T>;
    for (int64_t j = 0; j < S; ++j) {
      if (masked(d, key_keep, x.b, i, j)) row[j] = kNegInf<T>;
      row_max = std::max(row_max, row[j]);
    }
    if (row_max == kNegInf<T>) {  // every key is padding
      std::fill(row, row + S, T(0));
      if (lse != nullptr) lse[i] = kNegInf<L>;
      continue;
    }
    T denom = 0;
    for (int64_t j = 0; j < S; ++j) {
      row[j] = std::exp(row[j] - row_max);
      denom += row[j];
    }
    const T inv = T(1) / denom;
    for (int64_t j = 0; j < S; ++j) row[j] *= inv;
    if (lse != nullptr) lse[i] = static_cast<L>(row_max + std::log(denom));
  }
}

// p[T,T] = exp(scale * Q K^T - lse), masked entries 0: the probabilities again.
template <class T, class L>
void probs_from_lse(T* p, const L* lse, const Pair<T>& x, const int32_t* key_keep, const AttentionDims& d) {
  const int64_t S = d.seq, D = d.head_dim;
  gemm<T>(false, true, S, S, D, T(1) / std::sqrt(T(D)), x.q, x.ld, x.k, x.ld, T(0), p, S);
  for (int64_t i = 0; i < S; ++i) {
    T* row = p + i * S;
    const T l = static_cast<T>(lse[i]);
    for (int64_t j = 0; j < S; ++j)
      row[j] = l == kNegInf<T> || masked(d, key_keep, x.b, i, j) ? T(0) : std::exp(row[j] - l);
  }
}

// o (rows of stride C) = dropout(p) V.
template <class T>
void probs_times_v(T* o, const T* p, const Pair<T>& x, const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq, D = d.head_dim, C = d.heads * D;
  if (!dropout.enabled()) {
    gemm<T>(false, false, S, D, S, T(1), p, S, x.v, x.ld, T(0), o, C);
    return;
  }
  const T keep_scale = T(1) / (T(1) - T(dropout.prob));
  for (int64_t i = 0; i < S; ++i) {  // o_i = sum_j dropout(p_ij) v_j
    T* oi = o + i * C;
    std::fill(oi, oi + D, T(0));
    for (int64_t j = 0; j < S; ++j) {
      if (p[i * S + j] == T(0) || !dropout_keep(dropout.seed, prob_index(x.bh, i, j, S), dropout.prob))
        continue;
      const T w = p[i * S + j] * keep_scale;
      for (int64_t c = 0; c < D; ++c) oi[c] += w * x.v[j * x.ld + c];
    }
  }
}

// One pair's backward from its probabilities p; ds[T,T] is workspace.
template <class T>
void backward_pair(T* d_qkv, T* ds, const T* d_out, const T* p, const Pair<T>& x,
                   const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq, D = d.head_dim, C = d.heads * D;
  const T scale = T(1) / std::sqrt(T(D));
  const T keep_scale = dropout.enabled() ? T(1) / (T(1) - T(dropout.prob)) : T(1);
  T* dq = d_qkv + x.b * S * 3 * C + x.h * D;
  T* dk = dq + C;
  T* dv = dq + 2 * C;
  const T* go = d_out + x.b * S * C + x.h * D;

  // dP' = dO V^T; dV = P'^T dO.
  gemm<T>(false, true, S, S, D, T(1), go, C, x.v, x.ld, T(0), ds, S);
  if (!dropout.enabled()) {
    gemm<T>(true, false, S, D, S, T(1), p, S, go, C, T(0), dv, 3 * C);
  } else {
    for (int64_t j = 0; j < S; ++j) std::fill(dv + j * 3 * C, dv + j * 3 * C + D, T(0));
    for (int64_t i = 0; i < S; ++i)
      for (int64_t j = 0; j < S; ++j) {
        const bool keep = dropout_keep(dropout.seed, prob_index(x.bh, i, j, S), dropout.prob);
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
  gemm<T>(false, false, S, D, S, T(1), ds, S, x.k, x.ld, T(0), dq, 3 * C);
  gemm<T>(true, false, S, D, S, T(1), ds, S, x.q, x.ld, T(0), dk, 3 * C);
}

// Per-thread T x T buffers of the fused path.
template <class T>
std::vector<T>& thread_buffer(size_t n, int which) {
  thread_local std::vector<T> buffers[2];
  if (buffers[which].size() < n) buffers[which].resize(n);
  return buffers[which];
}
}  // namespace

template <class T>
void attention_forward(T* out, T* probs, const T* qkv, const int32_t* key_keep,
                       const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq, C = d.heads * d.head_dim;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
    const Pair<T> x(qkv, d, bh);
    T* p = probs + bh * S * S;
    softmax_scores<T, T>(p, nullptr, x, key_keep, d);
    probs_times_v(out + x.b * S * C + x.h * d.head_dim, p, x, d, dropout);
  }
}

template <class T>
void attention_backward(T* d_qkv, T* scratch, const T* d_out, const T* qkv, const T* probs,
                        const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < d.batch * d.heads; ++bh)
    backward_pair(d_qkv, scratch + bh * S * S, d_out, probs + bh * S * S, Pair<T>(qkv, d, bh), d, dropout);
}

template <class T>
void attention_forward_fused(T* out, T* lse, const T* qkv, const int32_t* key_keep,
                             const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq, C = d.heads * d.head_dim;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
    const Pair<T> x(qkv, d, bh);
    T* p = thread_buffer<T>(static_cast<size_t>(S * S), 0).data();
    softmax_scores<T, T>(p, lse + bh * S, x, key_keep, d);
    probs_times_v(out + x.b * S * C + x.h * d.head_dim, p, x, d, dropout);
  }
}

template <class T>
void attention_backward_fused(T* d_qkv, const T* d_out, const T* qkv, const T* lse,
                              const int32_t* key_keep, const AttentionDims& d, DropoutSpec dropout) {
  const int64_t S = d.seq;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < d.batch * d.heads; ++bh) {
    const Pair<T> x(qkv, d, bh);
    T* p = thread_buffer<T>(static_cast<size_t>(S * S), 0).data();
    T* ds = thread_buffer<T>(static_cast<size_t>(S * S), 1).data();
    probs_from_lse<T, T>(p, lse + bh * S, x, key_keep, d);
    backward_pair(d_qkv, ds, d_out, p, x, d, dropout);
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
template void attention_forward_fused<float>(float*, float*, const float*, const int32_t*,
                                             const AttentionDims&, DropoutSpec);
template void attention_forward_fused<double>(double*, double*, const double*, const int32_t*,
                                              const AttentionDims&, DropoutSpec);
template void attention_backward_fused<float>(float*, const float*, const float*, const float*,
                                              const int32_t*, const AttentionDims&, DropoutSpec);
template void attention_backward_fused<double>(double*, const double*, const double*, const double*,
                                               const int32_t*, const AttentionDims&, DropoutSpec);

}  // namespace mics::cpu
