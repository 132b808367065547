#pragma once
// Float64 reference implementations of the backend's forward ops, as plain loops.
// Deliberately independent of kernels/: no backend, no BLAS, no shared helpers, and
// formulas written in their textbook form (numerically stable where that matters),
// so a mistake in a kernel cannot be copied into its reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <vector>

namespace mics::ref {

using Vec = std::vector<double>;

// out[M,N] = in[M,K] @ weight[N,K]^T + bias[N] (bias may be empty).
inline Vec linear(const Vec& in, const Vec& weight, const Vec& bias, int64_t m, int64_t n,
                  int64_t k) {
  Vec out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = bias.empty() ? 0.0 : bias[j];
      for (int64_t c = 0; c < k; ++c) s += in[i * k + c] * weight[j * k + c];
      out[i * n + j] = s;
    }
  return out;
}

// Exact GELU x * Phi(x) via erfc (no cancellation for x < 0), or the tanh approximation
// 0.5 x (1 + tanh(u)), with 1 + tanh(u) = 2 / (1 + e^{-2u}) only for u < 0 to avoid the
// same cancellation.
inline double gelu(double x, bool tanh_approx) {
  if (!tanh_approx) return 0.5 * x * std::erfc(-x / std::numbers::sqrt2);
  const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
  if (u >= 0) return 0.5 * x * (1.0 + std::tanh(u));
  return x * std::exp(2 * u) / (1.0 + std::exp(2 * u));
}
inline Vec gelu(const Vec& in, bool tanh_approx) {
  Vec out(in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = gelu(in[i], tanh_approx);
  return out;
}

struct LayerNormOut {
  Vec out, mean, rstd;
};
// Two-pass mean / biased variance per row, as torch.nn.LayerNorm.
inline LayerNormOut layernorm(const Vec& in, const Vec& gamma, const Vec& beta, int64_t m,
                              int64_t c, double eps) {
  LayerNormOut r{Vec(in.size()), Vec(static_cast<size_t>(m)), Vec(static_cast<size_t>(m))};
  for (int64_t i = 0; i < m; ++i) {
    double mu = 0;
    for (int64_t j = 0; j < c; ++j) mu += in[i * c + j];
    mu /= static_cast<double>(c);
    double var = 0;
    for (int64_t j = 0; j < c; ++j) var += (in[i * c + j] - mu) * (in[i * c + j] - mu);
    var /= static_cast<double>(c);
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < c; ++j)
      r.out[i * c + j] = (in[i * c + j] - mu) * rstd * gamma[j] + beta[j];
    r.mean[i] = mu;
    r.rstd[i] = rstd;
  }
  return r;
}

struct AttentionOut {
  Vec out, probs;
};
// qkv[B,T,3C] (q | k | v, head h at columns h*D of each), out[B,T,C], probs[B,H,T,T].
// Key j is hidden from query i when causal && j > i, or key_keep[b*T + j] == 0
// (key_keep empty: no padding). A query with every key hidden gets probabilities 0 and
// output 0 (the engine's convention for fully padded rows). drop_mult (empty: no
// dropout) multiplies each probability before P @ V: 0 or 1/(1-p) per element.
inline AttentionOut attention(const Vec& qkv, const std::vector<int32_t>& key_keep,
                              const Vec& drop_mult, int64_t batch, int64_t seq, int64_t heads,
                              int64_t head_dim, bool causal) {
  const int64_t T = seq, D = head_dim, C = heads * D;
  AttentionOut r{Vec(static_cast<size_t>(batch * T * C), 0.0),
                 Vec(static_cast<size_t>(batch * heads * T * T), 0.0)};
  auto at = [&](int64_t b, int64_t t, int64_t part, int64_t h, int64_t d) {
    return qkv[((b * T + t) * 3 + part) * C + h * D + d];
  };
  Vec score(static_cast<size_t>(T));
  std::vector<char> visible(static_cast<size_t>(T));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < T; ++i) {
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < T; ++j) {
          visible[j] = !(causal && j > i) && (key_keep.empty() || key_keep[b * T + j] != 0);
          if (!visible[j]) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          score[j] = s / std::sqrt(static_cast<double>(D));
          max = std::max(max, score[j]);
        }
        if (max == -std::numeric_limits<double>::infinity()) continue;  // all hidden
        double denom = 0;
        for (int64_t j = 0; j < T; ++j)
          if (visible[j]) denom += std::exp(score[j] - max);
        const int64_t prow = ((b * heads + h) * T + i) * T;
        for (int64_t j = 0; j < T; ++j) {
          const double p = visible[j] ? std::exp(score[j] - max) / denom : 0.0;
          r.probs[prow + j] = p;
          const double pd = drop_mult.empty() ? p : p * drop_mult[prow + j];
          for (int64_t d = 0; d < D; ++d) r.out[(b * T + i) * C + h * D + d] += pd * at(b, j, 2, h, d);
        }
      }
  return r;
}

// out[r] = tok[ids[r]] + pos[r % seq] (+ type[type_ids[r]] when `type` is non-empty).
inline Vec embedding(const std::vector<int32_t>& ids, const std::vector<int32_t>& type_ids,
                     const Vec& tok, const Vec& pos, const Vec& type, int64_t cols, int64_t seq) {
  const int64_t rows = static_cast<int64_t>(ids.size());
  Vec out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double v = tok[ids[r] * cols + c] + pos[(r % seq) * cols + c];
      if (!type.empty()) v += type[type_ids[r] * cols + c];
      out[r * cols + c] = v;
    }
  return out;
}

inline Vec gather_rows(const Vec& in, const std::vector<int32_t>& rows, int64_t cols) {
  Vec out;
  for (int32_t r : rows)
    for (int64_t c = 0; c < cols; ++c) out.push_back(in[r * cols + c]);
  return out;
}

// loss[i] = logsumexp(logits[i]) - logits[i][label[i]]; 0 where label < 0 (ignored).
inline Vec cross_entropy(const Vec& logits, const std::vector<int32_t>& labels, int64_t vocab) {
  Vec losses(labels.size(), 0.0);
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0) continue;
    const double* x = &logits[i * static_cast<size_t>(vocab)];
    const double max = *std::max_element(x, x + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(x[v] - max);
    losses[i] = max + std::log(sum) - x[labels[i]];
  }
  return losses;
}

// One step of torch.optim.AdamW (decoupled weight decay), in double.
struct AdamWParams {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
  int64_t step;
};
inline void adamw_step(Vec& p, const Vec& grad, Vec& m, Vec& v, const AdamWParams& s) {
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  for (size_t i = 0; i < p.size(); ++i) {
    const double g = grad[i] * s.grad_scale;
    p[i] *= 1.0 - s.lr * s.weight_decay;
    m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
    v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
    p[i] -= s.lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + s.eps);
  }
}

}  // namespace mics::ref
