// Op-level numerics of the CPU backend against float64 references (reference_ops.h).
//
// Method: every forward runs in fp32 and fp64 on fixed-seed random inputs and is compared
// with the fp64 reference; every backward is compared with central finite differences of
// the fp64 reference of L = sum(w * out), w random, so the gradient rule (what overwrites,
// what accumulates) is checked along with the formulas. Inputs are rounded to fp32 first,
// so both dtypes and the reference see bit-identical values and any difference is the op's.
// Set MICS_TOL_REPORT=1 to print, per comparison, the worst error as a fraction of the
// tolerance (how much margin each tolerance has).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/ops.h"
#include "tests/numerics/expect_close.h"
#include "tests/numerics/reference_ops.h"
#include "tests/numerics/tolerance.h"

namespace mics {
namespace {

using ref::Vec;
using tol::Precision;
using tol::Tol;
using Ints = std::vector<int32_t>;

Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

// ---------------------------------------------------------------- helpers

// Uniform in [lo, hi), rounded to fp32 (see the file comment).
Vec random_vec(std::mt19937_64& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double& x : v) x = static_cast<float>(dist(rng));
  return v;
}

Ints random_ints(std::mt19937_64& rng, size_t n, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  Ints v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Vec plus(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] + b[i];
  return r;
}

int64_t ssize(const Vec& v) { return static_cast<int64_t>(v.size()); }

// Host storage for one tensor in the dtype under test.
template <class T>
struct Buf {
  std::vector<T> data;
  Shape shape;
  Buf(const Vec& v, Shape s) : data(v.begin(), v.end()), shape(s) {
    EXPECT_EQ(static_cast<int64_t>(v.size()), s.numel()) << "test bug: buffer size";
  }
  // Filled with NaN, so an output entry the op forgets to write fails the comparison.
  explicit Buf(Shape s)
      : data(static_cast<size_t>(s.numel()), std::numeric_limits<T>::quiet_NaN()), shape(s) {}
  Tensor t() { return Tensor(data.data(), shape); }
  Vec vec() const { return Vec(data.begin(), data.end()); }
};

IntTensor ints(Ints& v) { return IntTensor{v.data(), Shape{static_cast<int64_t>(v.size())}}; }

template <class T> const char* dtype_label() { return std::is_same_v<T, float> ? "f32" : "f64"; }

// Central differences of loss() w.r.t. each entry of x (perturbed in place, then restored).
Vec fd_gradient(Vec& x, const std::function<double()>& loss) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i], h = tol::kFdStep * std::max(1.0, std::abs(x0));
    x[i] = x0 + h;
    const double up = loss();
    x[i] = x0 - h;
    const double down = loss();
    x[i] = x0;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

// Runs a typed test body for fp32 and fp64, with readable suffixes.
struct DTypeNames {
  template <class T> static std::string GetName(int) { return dtype_label<T>(); }
};
using FloatTypes = ::testing::Types<float, double>;
#define MICS_TYPED_SUITE(Suite)                       \
  template <class T> class Suite : public ::testing::Test {}; \
  TYPED_TEST_SUITE(Suite, FloatTypes, DTypeNames)

// ---------------------------------------------------------------- linear

MICS_TYPED_SUITE(Linear);

template <class T>
void check_linear_forward(int64_t m, int64_t k, int64_t n, bool with_bias, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "M=" << m << " K=" << k << " N=" << n << " bias=" << with_bias);
  std::mt19937_64 rng(seed);
  const Vec in = random_vec(rng, m * k), w = random_vec(rng, n * k);
  const Vec b = with_bias ? random_vec(rng, n) : Vec{};
  Buf<T> out(Shape{m, n}), tin(in, {m, k}), tw(w, {n, k}), tb(b, {with_bias ? n : 0});
  cpu().linear_forward(out.t(), tin.t(), tw.t(), with_bias ? tb.t() : Tensor{});
  // K products of size <= 1 into partial sums of size ~sqrt(K): the roundings add like a
  // random walk, ~sqrt(K) u per unit of sum, on sums of size sqrt(K) (+1 for the bias). x4.
  const double sk = std::sqrt(static_cast<double>(k));
  expect_close(out.vec(), ref::linear(in, w, b, m, n, k), tol::forward<T>(4 * sk, sk + 1), "out");
}

TYPED_TEST(Linear, ForwardMatchesReference) {
  for (bool bias : {false, true}) check_linear_forward<TypeParam>(7, 13, 5, bias, 11);
}

TYPED_TEST(Linear, ForwardLargerShape) {
  for (bool bias : {false, true}) check_linear_forward<TypeParam>(67, 131, 71, bias, 12);
}

TYPED_TEST(Linear, BackwardMatchesFiniteDifferencesAndAccumulates) {
  using T = TypeParam;
  const int64_t m = 7, k = 13, n = 5;
  enum class DIn { overwrite, accumulate, skipped };
  for (bool with_bias : {false, true})
    for (DIn mode : {DIn::overwrite, DIn::accumulate, DIn::skipped}) {
      SCOPED_TRACE(testing::Message() << "bias=" << with_bias << " d_in mode=" << int(mode));
      std::mt19937_64 rng(21);
      Vec in = random_vec(rng, m * k), w = random_vec(rng, n * k), b = random_vec(rng, n);
      if (!with_bias) b.clear();
      const Vec w_out = random_vec(rng, m * n);
      // Nonzero prefills: parameter gradients must add to them, d_in per the flag.
      const Vec d_in0 = random_vec(rng, m * k), d_w0 = random_vec(rng, n * k),
                d_b0 = random_vec(rng, n);
      auto loss = [&] { return dot(w_out, ref::linear(in, w, b, m, n, k)); };
      const Vec g_in = fd_gradient(in, loss), g_w = fd_gradient(w, loss), g_b = fd_gradient(b, loss);

      Buf<T> d_in(d_in0, {m, k}), d_w(d_w0, {n, k}), d_b(d_b0, {n}), d_out(w_out, {m, n}),
          tin(in, {m, k}), tw(w, {n, k});
      cpu().linear_backward(mode == DIn::skipped ? Tensor{} : d_in.t(), d_w.t(),
                            with_bias ? d_b.t() : Tensor{}, d_out.t(), tin.t(), tw.t(),
                            mode == DIn::accumulate ? Accumulate::yes : Accumulate::no);
      // d_in: N-term dots, d_weight / d_bias: M-term sums; each added to a prefill of size 1.
      const double sn = std::sqrt(double(n)), sm = std::sqrt(double(m));
      if (mode == DIn::overwrite) expect_close(d_in.vec(), g_in, tol::gradient<T>(4 * sn, sn + 1), "d_in (=)");
      if (mode == DIn::accumulate)
        expect_close(d_in.vec(), plus(d_in0, g_in), tol::gradient<T>(4 * sn, sn + 1), "d_in (+=)");
      if (mode == DIn::skipped) expect_close(d_in.vec(), d_in0, Tol{0, 0}, "d_in untouched");
      expect_close(d_w.vec(), plus(d_w0, g_w), tol::gradient<T>(4 * sm, sm + 1), "d_weight (+=)");
      expect_close(d_b.vec(), with_bias ? plus(d_b0, g_b) : d_b0, tol::gradient<T>(4 * sm, sm + 1),
                   with_bias ? "d_bias (+=)" : "d_bias untouched");
    }
}

// acc_params no: the parameter gradients are written over whatever the buffers held (NaN
// here), the same bits as adding into zeroed buffers; with no rows, written as zeros.
// linear_backward, linear_gelu_backward and layernorm_backward alike.
TYPED_TEST(Linear, ParameterGradientsWrittenOverWithAccParamsNo) {
  using T = TypeParam;
  const double nan = std::nan("");
  for (int64_t m : {int64_t{7}, int64_t{0}}) {
    SCOPED_TRACE(testing::Message() << "M=" << m);
    const int64_t k = 13, n = 5;
    std::mt19937_64 rng(23);
    const Vec in = random_vec(rng, m * k), w = random_vec(rng, n * k), d_out = random_vec(rng, m * n);
    const Vec pre = random_vec(rng, m * k, -3, 3), gamma = random_vec(rng, k, 0.5, 1.5), beta = random_vec(rng, k);
    for (int op = 0; op < 3; ++op) {
      SCOPED_TRACE(op == 0 ? "linear_backward" : op == 1 ? "linear_gelu_backward" : "layernorm_backward");
      auto run = [&](double prefill, Accumulate acc_params) {
        const bool ln = op == 2;
        const int64_t pn = ln ? k : n;  // gradient rows: the weight's, or LayerNorm's width
        Buf<T> g_w(Vec(ln ? k : n * k, prefill), {ln ? k : n * k}), g_b(Vec(pn, prefill), {pn}),
            d_x(Shape{m, k}), tin(in, {m, k}), tw(w, {n, k}), tdo(d_out, {m, n}), tpre(pre, {m, k}),
            tg(gamma, {k}), tbe(beta, {k}), ln_out(Shape{m, k}), mean(Shape{m}), rstd(Shape{m}), dy(in, {m, k});
        if (op == 0) {
          cpu().linear_backward(d_x.t(), g_w.t().reshaped({n, k}), g_b.t(), tdo.t(), tin.t(), tw.t(), Accumulate::no,
                                acc_params);
        } else if (op == 1) {
          cpu().linear_gelu_backward(d_x.t(), g_w.t().reshaped({n, k}), g_b.t(), tdo.t(), tin.t(), tpre.t(), tw.t(),
                                     GeluKind::erf, acc_params);
        } else {
          cpu().layernorm_forward(ln_out.t(), mean.t(), rstd.t(), tpre.t(), tg.t(), tbe.t(), 1e-5f);
          cpu().layernorm_backward(d_x.t(), g_w.t(), g_b.t(), dy.t(), tpre.t(), tg.t(), mean.t(), rstd.t(),
                                   Accumulate::no, acc_params);
        }
        return std::pair{g_w.vec(), g_b.vec()};
      };
      const auto [w_added, b_added] = run(0.0, Accumulate::yes);
      const auto [w_written, b_written] = run(nan, Accumulate::no);
      expect_close(w_written, w_added, Tol{0, 0}, "weight (or gamma) gradient written over NaN");
      expect_close(b_written, b_added, Tol{0, 0}, "bias (or beta) gradient written over NaN");
      if (m == 0) expect_close(w_written, Vec(w_written.size(), 0.0), Tol{0, 0}, "no rows: zeros");
    }
  }
}

// ---------------------------------------------------------------- gelu

MICS_TYPED_SUITE(Gelu);

constexpr GeluKind kGeluKinds[] = {GeluKind::erf, GeluKind::tanh};
const char* gelu_name(GeluKind k) { return k == GeluKind::erf ? "erf" : "tanh"; }

TYPED_TEST(Gelu, ForwardMatchesReference) {
  using T = TypeParam;
  for (GeluKind kind : kGeluKinds) {
    SCOPED_TRACE(gelu_name(kind));
    std::mt19937_64 rng(31);
    Vec in = random_vec(rng, 67 * 131, -6, 6);
    for (double x : {0.0, 1e-4, -1e-4, 10.0, -10.0, 12.0, -12.0}) in.push_back(x);  // tails
    Buf<T> out(Shape{ssize(in)}), tin(in, {ssize(in)});
    cpu().gelu_forward(out.t(), tin.t(), kind);
    // A few roundings per element; for x < 0, 1 + erf(.) (or the exp of an argument of
    // size ~|x|^3) turns them into absolute errors of a few u |x|.
    expect_close(out.vec(), ref::gelu(in, kind == GeluKind::tanh),
                 tol::forward<T>(4, max_abs(in)), std::string("gelu ") + gelu_name(kind));
  }
}

TYPED_TEST(Gelu, BackwardMatchesFiniteDifferences) {
  using T = TypeParam;
  for (GeluKind kind : kGeluKinds) {
    SCOPED_TRACE(gelu_name(kind));
    std::mt19937_64 rng(32);
    const double xmax = 6;
    Vec in = random_vec(rng, 211, -xmax, xmax);
    const Vec w = random_vec(rng, in.size());
    const bool tanh_approx = kind == GeluKind::tanh;
    auto loss = [&] { return dot(w, ref::gelu(in, tanh_approx)); };
    const Vec g = fd_gradient(in, loss);
    const Shape s{ssize(in)};
    Buf<T> d_in(s), d_out(w, s), tin(in, s);
    cpu().gelu_backward(d_in.t(), d_out.t(), tin.t(), kind);
    // gelu'(x) = s + 2x s(1-s) u'(x) (tanh form): 1 - s is absolute-accurate only to u,
    // amplified by 2|x| u'(x) <= 2 xmax sqrt(2/pi)(1 + 0.134 xmax^2) ~ 56 at xmax = 6.
    const double amp = 1 + 2 * xmax * std::sqrt(2 / std::numbers::pi) * (1 + 3 * 0.044715 * xmax * xmax);
    expect_close(d_in.vec(), g, tol::gradient<T>(4, amp), "d_in");
    // d_in may alias d_out: must give the same values.
    Buf<T> alias(w, s);
    cpu().gelu_backward(alias.t(), alias.t(), tin.t(), kind);
    expect_close(alias.vec(), d_in.vec(), Tol{0, 0}, "d_in aliasing d_out");
  }
}

// ---------------------------------------------------------------- layernorm

MICS_TYPED_SUITE(LayerNorm);

constexpr float kLnEps = 1e-5f;

template <class T>
void check_layernorm_forward(int64_t m, int64_t c, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "M=" << m << " C=" << c);
  std::mt19937_64 rng(seed);
  const Vec in = random_vec(rng, m * c, 1.0, 3.0);  // mean ~2: centring must be done right
  const Vec gamma = random_vec(rng, c, 0.5, 1.5), beta = random_vec(rng, c);
  Buf<T> out(Shape{m, c}), mean(Shape{m}), rstd(Shape{m}), tin(in, {m, c}), tg(gamma, {c}),
      tb(beta, {c});
  cpu().layernorm_forward(out.t(), mean.t(), rstd.t(), tin.t(), tg.t(), tb.t(), kLnEps);
  const auto r = ref::layernorm(in, gamma, beta, m, c, double(kLnEps));
  // Statistics: C-term sums (sqrt(C) growth) of values ~2 (the mean offset enters x - mu);
  // out = xhat gamma + beta with |xhat| <= 2: a few roundings on values ~3.
  const double sc = std::sqrt(double(c));
  expect_close(out.vec(), r.out, tol::forward<T>(4 * sc, 2 * 1.5 + 1), "out");
  expect_close(mean.vec(), r.mean, tol::forward<T>(4 * sc, 2), "mean");
  expect_close(rstd.vec(), r.rstd, tol::forward<T>(4 * sc, max_abs(r.rstd)), "rstd");
}

TYPED_TEST(LayerNorm, ForwardMatchesReference) { check_layernorm_forward<TypeParam>(7, 37, 41); }
TYPED_TEST(LayerNorm, ForwardLargerShape) { check_layernorm_forward<TypeParam>(67, 131, 42); }

TYPED_TEST(LayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  using T = TypeParam;
  const int64_t m = 7, c = 37;
  for (Accumulate acc : {Accumulate::no, Accumulate::yes}) {
    SCOPED_TRACE(acc == Accumulate::yes ? "d_in +=" : "d_in =");
    std::mt19937_64 rng(43);
    Vec in = random_vec(rng, m * c, 1.0, 3.0), gamma = random_vec(rng, c, 0.5, 1.5),
        beta = random_vec(rng, c);
    const Vec w = random_vec(rng, m * c);
    const Vec d_in0 = random_vec(rng, m * c), d_g0 = random_vec(rng, c), d_b0 = random_vec(rng, c);
    auto loss = [&] { return dot(w, ref::layernorm(in, gamma, beta, m, c, double(kLnEps)).out); };
    const Vec g_in = fd_gradient(in, loss), g_g = fd_gradient(gamma, loss),
              g_b = fd_gradient(beta, loss);

    // The backward consumes the statistics saved by the backend's own forward.
    Buf<T> out(Shape{m, c}), mean(Shape{m}), rstd(Shape{m}), tin(in, {m, c}), tg(gamma, {c}),
        tb(beta, {c});
    cpu().layernorm_forward(out.t(), mean.t(), rstd.t(), tin.t(), tg.t(), tb.t(), kLnEps);
    Buf<T> d_in(d_in0, {m, c}), d_g(d_g0, {c}), d_b(d_b0, {c}), d_out(w, {m, c});
    cpu().layernorm_backward(d_in.t(), d_g.t(), d_b.t(), d_out.t(), tin.t(), tg.t(), mean.t(),
                             rstd.t(), acc);
    // d_in = rstd (g - mean(g) - xhat mean(g xhat)): C-term means of |g| <= 1.5, times
    // rstd ~ 2; the fp32 mean (error u * 2) shifts xhat by ~u * 2 * rstd. d_gamma, d_beta:
    // M-term sums onto a prefill of size 1.
    const double sc = std::sqrt(double(c)), sm = std::sqrt(double(m));
    const double rs = max_abs(rstd.vec());
    expect_close(d_in.vec(), acc == Accumulate::yes ? plus(d_in0, g_in) : g_in,
                 tol::gradient<T>(8 * sc, 1.5 * rs * 4 + 1), "d_in");
    expect_close(d_g.vec(), plus(d_g0, g_g), tol::gradient<T>(8 * sm, 2 * sm + 1), "d_gamma (+=)");
    expect_close(d_b.vec(), plus(d_b0, g_b), tol::gradient<T>(4 * sm, sm + 1), "d_beta (+=)");
  }
}

// ---------------------------------------------------------------- attention

struct AttnCase {
  const char* name;
  int64_t batch, seq, heads, head_dim;
  bool causal, padding;
  float drop_prob;
};

// Key padding: batch 0 hides one middle key; the last batch hides key 0 (so with a causal
// mask query 0 sees no key at all) and the trailing keys (right padding).
Ints make_key_keep(int64_t batch, int64_t seq) {
  Ints keep(static_cast<size_t>(batch * seq), 1);
  keep[static_cast<size_t>(seq / 2)] = 0;
  const int64_t last = (batch - 1) * seq;
  keep[static_cast<size_t>(last)] = 0;
  for (int64_t t = seq - 3; t < seq; ++t) keep[static_cast<size_t>(last + t)] = 0;
  return keep;
}

// The dropout multipliers (0 or 1/(1-p)) of probs[B,H,T,T]: dropout is a function of
// (seed, element index), here the element index within probs, so the standalone dropout
// op on a tensor of ones yields the mask attention must use.
Vec attention_drop_mult(const AttnCase& c, DropoutSpec spec) {
  if (!spec.enabled()) return {};
  const int64_t n = c.batch * c.heads * c.seq * c.seq;
  Vec ones(static_cast<size_t>(n), 1.0), mult(static_cast<size_t>(n));
  cpu().dropout_forward(Tensor(mult.data(), Shape{n}), Tensor(ones.data(), Shape{n}), spec);
  return mult;
}

class Attention : public ::testing::TestWithParam<AttnCase> {};

// Inputs, reference outputs and (optionally) the FD gradient of one case, shared by the
// fp32 and fp64 runs: the FD of the reference is the expensive part.
struct AttnProblem {
  AttnCase c;
  DropoutSpec drop;
  Vec qkv, mult, w, fd_grad;
  Ints keep;
  ref::AttentionOut r;
};

AttnProblem make_attention_problem(const AttnCase& c, bool with_backward) {
  const int64_t B = c.batch, S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  AttnProblem pr{c, DropoutSpec{c.drop_prob, 0xD1CEull}, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 rng(51);
  pr.qkv = random_vec(rng, B * S * 3 * C, -1.5, 1.5);  // scores up to ~2 sqrt(D): peaked rows
  pr.keep = c.padding ? make_key_keep(B, S) : Ints{};
  pr.mult = attention_drop_mult(c, pr.drop);
  pr.r = ref::attention(pr.qkv, pr.keep, pr.mult, B, S, H, D, c.causal);
  if (with_backward) {
    pr.w = random_vec(rng, B * S * C);
    Vec x = pr.qkv;
    auto loss = [&] { return dot(pr.w, ref::attention(x, pr.keep, pr.mult, B, S, H, D, c.causal).out); };
    pr.fd_grad = fd_gradient(x, loss);
  }
  return pr;
}

template <class T>
void check_attention(AttnProblem& pr) {
  SCOPED_TRACE(dtype_label<T>());
  const AttnCase& c = pr.c;
  const int64_t B = c.batch, S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  const AttentionDims dims{B, S, H, D, c.causal};
  Buf<T> out(Shape{B, S, C}), probs(Shape{B, H, S, S}), tqkv(pr.qkv, {B, S, 3 * C});
  IntTensor tkeep = c.padding ? ints(pr.keep) : IntTensor{};
  cpu().attention_forward(out.t(), probs.t(), tqkv.t(), tkeep, dims, pr.drop);
  // Scores: D-term dots of values <= 1.5 (size up to 2.25 sqrt(D)); exp turns their absolute
  // error into relative error of the probabilities; out sums T of them times |v| <= 1.5 and
  // the dropout scale 1/(1-p).
  const double ss = 2.25 * std::sqrt(double(D)), keep_scale = 1 / (1 - double(c.drop_prob));
  const double growth = 4 * (std::sqrt(double(D)) + ss + std::sqrt(double(S)));
  expect_close(probs.vec(), pr.r.probs, tol::forward<T>(growth, 1), "probs");
  expect_close(out.vec(), pr.r.out, tol::forward<T>(growth, 1.5 * keep_scale), "out");
  if (pr.fd_grad.empty()) return;

  Buf<T> d_qkv(Shape{B, S, 3 * C}), scratch(Shape{B, H, S, S}), d_out(pr.w, {B, S, C});
  cpu().attention_backward(d_qkv.t(), scratch.t(), d_out.t(), tqkv.t(), probs.t(), dims, pr.drop);
  // dV sums T terms p w; dQ/dK chain a T-term and a D-term product through the softmax
  // Jacobian: growth ~ sqrt(T) + sqrt(D) + score size, on gradients of size max|g|.
  expect_close(d_qkv.vec(), pr.fd_grad,
               tol::gradient<T>(2 * growth, max_abs(pr.fd_grad) * keep_scale), "d_qkv");
}

// Each row's log-sum-exp of its scaled, shown scores, in double (-inf: no key shown).
Vec reference_lse(const AttnProblem& pr) {
  const AttnCase& c = pr.c;
  const int64_t S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  Vec lse;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < S; ++i) {
        Vec s;
        for (int64_t j = 0; j < S; ++j) {
          if ((c.causal && j > i) || (!pr.keep.empty() && pr.keep[static_cast<size_t>(b * S + j)] == 0)) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += pr.qkv[static_cast<size_t>((b * S + i) * 3 * C + h * D + d)] *
                   pr.qkv[static_cast<size_t>((b * S + j) * 3 * C + C + h * D + d)];
          s.push_back(dot / std::sqrt(double(D)));
        }
        if (s.empty()) {
          lse.push_back(-std::numeric_limits<double>::infinity());
          continue;
        }
        const double m = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double x : s) sum += std::exp(x - m);
        lse.push_back(m + std::log(sum));
      }
  return lse;
}

// The fused path against the same references: out, lse, and the gradient recomputed from
// lse (same tolerances as the materialised path: the same operations, except that the
// backward's probabilities are exp(s - lse) instead of the forward's normalised rows).
template <class T>
void check_fused_attention(AttnProblem& pr) {
  SCOPED_TRACE(std::string("fused ") + dtype_label<T>());
  const AttnCase& c = pr.c;
  const int64_t B = c.batch, S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  const AttentionDims dims{B, S, H, D, c.causal};
  Buf<T> out(Shape{B, S, C}), lse(Shape{B, H, S}), tqkv(pr.qkv, {B, S, 3 * C});
  IntTensor tkeep = c.padding ? ints(pr.keep) : IntTensor{};
  cpu().attention_forward_fused(out.t(), lse.t(), tqkv.t(), tkeep, dims, pr.drop);
  const double ss = 2.25 * std::sqrt(double(D)), keep_scale = 1 / (1 - double(c.drop_prob));
  const double growth = 4 * (std::sqrt(double(D)) + ss + std::sqrt(double(S)));
  expect_close(out.vec(), pr.r.out, tol::forward<T>(growth, 1.5 * keep_scale), "out");
  const Vec want_lse = reference_lse(pr);
  const Vec got_lse = lse.vec();
  Vec finite_got, finite_want;  // -inf rows must agree exactly; the rest within tolerance
  for (size_t i = 0; i < want_lse.size(); ++i) {
    if (std::isinf(want_lse[i])) {
      EXPECT_EQ(got_lse[i], want_lse[i]) << "lse row " << i;
      continue;
    }
    finite_got.push_back(got_lse[i]);
    finite_want.push_back(want_lse[i]);
  }
  expect_close(finite_got, finite_want, tol::forward<T>(growth, ss + std::log(double(S))), "lse");
  if (pr.fd_grad.empty()) return;

  Buf<T> d_qkv(Shape{B, S, 3 * C}), d_out(pr.w, {B, S, C});
  cpu().attention_backward_fused(d_qkv.t(), d_out.t(), tqkv.t(), out.t(), lse.t(), tkeep, dims, pr.drop);
  expect_close(d_qkv.vec(), pr.fd_grad,
               tol::gradient<T>(2 * growth, max_abs(pr.fd_grad) * keep_scale), "d_qkv");
}

TEST_P(Attention, ForwardAndBackwardMatchReference) {
  AttnProblem pr = make_attention_problem(GetParam(), true);
  check_attention<float>(pr);
  check_attention<double>(pr);
  check_fused_attention<float>(pr);
  check_fused_attention<double>(pr);
}

INSTANTIATE_TEST_SUITE_P(
    Ops, Attention,
    ::testing::Values(AttnCase{"bidirectional", 2, 11, 3, 5, false, false, 0.0f},
                      AttnCase{"causal", 2, 11, 3, 5, true, false, 0.0f},
                      AttnCase{"bidirectional_padded", 2, 11, 3, 5, false, true, 0.0f},
                      AttnCase{"causal_padded", 2, 11, 3, 5, true, true, 0.0f},
                      AttnCase{"bidirectional_dropout", 2, 11, 3, 5, false, false, 0.2f},
                      AttnCase{"causal_padded_dropout", 2, 11, 3, 5, true, true, 0.2f},
                      AttnCase{"bidirectional_padded_dropout", 2, 11, 3, 5, false, true, 0.5f}),
    [](const testing::TestParamInfo<AttnCase>& info) { return std::string(info.param.name); });

TEST(AttentionLarger, ForwardMatchesReference) {
  for (const AttnCase& c : {AttnCase{"causal_padded", 2, 67, 2, 16, true, true, 0.0f},
                            AttnCase{"bidirectional_dropout", 1, 67, 3, 8, false, false, 0.1f}}) {
    SCOPED_TRACE(c.name);
    AttnProblem pr = make_attention_problem(c, false);
    check_attention<float>(pr);
    check_attention<double>(pr);
    check_fused_attention<float>(pr);
    check_fused_attention<double>(pr);
  }
}

// The direct consistency check for dropout: the backend's backward against central
// differences of the backend's own fp64 forward with the same seed (independent of how
// the mask is indexed). Directional derivatives, with directions confined to the q, k or
// v columns so a wrong dq, dk or dv is told apart: a few backend calls instead of two per
// entry (each call opens B*H OpenMP regions, slow when the cores are oversubscribed).
TEST(AttentionDropout, BackwardMatchesFiniteDifferencesOfBackendForward) {
  const int64_t B = 2, S = 5, H = 2, D = 3, C = H * D;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "bidirectional");
    const AttentionDims dims{B, S, H, D, causal};
    const DropoutSpec drop{0.3f, 77};
    std::mt19937_64 rng(52);
    Vec qkv = random_vec(rng, B * S * 3 * C);
    const Vec w = random_vec(rng, B * S * C);
    Ints keep = make_key_keep(B, S);
    Vec out(w.size()), probs(static_cast<size_t>(B * H * S * S));
    auto forward = [&](const Vec& x) {
      cpu().attention_forward(Tensor(out.data(), {B, S, C}), Tensor(probs.data(), {B, H, S, S}),
                              Tensor(const_cast<double*>(x.data()), {B, S, 3 * C}), ints(keep),
                              dims, drop);
      return dot(w, out);
    };
    forward(qkv);  // probs of the unperturbed input, for the backward
    Vec d_qkv(qkv.size()), scratch(probs.size()), d_out = w;
    cpu().attention_backward(Tensor(d_qkv.data(), {B, S, 3 * C}), Tensor(scratch.data(), {B, H, S, S}),
                             Tensor(d_out.data(), {B, S, C}), Tensor(qkv.data(), {B, S, 3 * C}),
                             Tensor(probs.data(), {B, H, S, S}), dims, drop);
    for (int part = 0; part < 3; ++part)
      for (int trial = 0; trial < 2; ++trial) {
        SCOPED_TRACE(testing::Message() << "direction in " << "qkv"[part] << ", trial " << trial);
        Vec dir = random_vec(rng, qkv.size());
        for (size_t i = 0; i < dir.size(); ++i)
          if (static_cast<int64_t>(i) % (3 * C) / C != part) dir[i] = 0;
        const double h = tol::kFdStep;
        Vec up = qkv, down = qkv;
        for (size_t i = 0; i < dir.size(); ++i) up[i] += h * dir[i], down[i] -= h * dir[i];
        const double fd = (forward(up) - forward(down)) / (2 * h);
        double analytic = 0, magnitude = 0;
        for (size_t i = 0; i < dir.size(); ++i)
          analytic += d_qkv[i] * dir[i], magnitude += std::abs(d_qkv[i] * dir[i]);
        expect_close({analytic}, {fd}, tol::gradient<double>(1, magnitude),
                     "directional derivative vs FD of backend forward");
      }
  }
}

// ---------------------------------------------------------------- embeddings, gather/scatter

MICS_TYPED_SUITE(Embedding);

TYPED_TEST(Embedding, ForwardAndBackwardMatchReference) {
  using T = TypeParam;
  const int64_t B = 3, S = 7, rows = B * S, C = 37, V = 29, P = 11, K = 3;
  for (bool with_types : {false, true}) {
    SCOPED_TRACE(with_types ? "with token types" : "without token types");
    std::mt19937_64 rng(61);
    Ints ids = random_ints(rng, rows, 0, V), type_ids = random_ints(rng, rows, 0, K);
    ids[5] = ids[12] = ids[20] = ids[0];  // repeated ids: their gradients must add up
    Vec tok = random_vec(rng, V * C), pos = random_vec(rng, P * C), type = random_vec(rng, K * C);
    if (!with_types) type.clear();
    const Vec w = random_vec(rng, rows * C);
    const Vec d_tok0 = random_vec(rng, V * C), d_pos0 = random_vec(rng, P * C),
              d_type0 = random_vec(rng, K * C);

    Buf<T> out(Shape{rows, C}), ttok(tok, {V, C}), tpos(pos, {P, C}), ttype(type, {with_types ? K : 0, C});
    IntTensor tids = ints(ids), ttypes = with_types ? ints(type_ids) : IntTensor{};
    cpu().embedding_forward(out.t(), tids, ttypes, ttok.t(), tpos.t(), with_types ? ttype.t() : Tensor{}, S);
    // Two or three additions of values <= 1.
    expect_close(out.vec(), ref::embedding(ids, type_ids, tok, pos, type, C, S),
                 tol::forward<T>(2, 3), "out");

    auto loss = [&] { return dot(w, ref::embedding(ids, type_ids, tok, pos, type, C, S)); };
    const Vec g_tok = fd_gradient(tok, loss), g_pos = fd_gradient(pos, loss),
              g_type = fd_gradient(type, loss);
    Buf<T> d_tok(d_tok0, {V, C}), d_pos(d_pos0, {P, C}), d_type(d_type0, {K, C}), d_out(w, {rows, C});
    cpu().embedding_backward(d_tok.t(), d_pos.t(), with_types ? d_type.t() : Tensor{}, d_out.t(),
                             tids, ttypes, S);
    // Sums of up to `rows` values <= 1 onto a prefill of size 1.
    const Tol t = tol::gradient<T>(4 * std::sqrt(double(rows)), std::sqrt(double(rows)) + 1);
    expect_close(d_tok.vec(), plus(d_tok0, g_tok), t, "d_tok (+=)");
    expect_close(d_pos.vec(), plus(d_pos0, g_pos), t, "d_pos (+=)");
    expect_close(d_type.vec(), with_types ? plus(d_type0, g_type) : d_type0, t,
                 with_types ? "d_type (+=)" : "d_type untouched");
  }
}

MICS_TYPED_SUITE(GatherScatter);

TYPED_TEST(GatherScatter, GatherMatchesReferenceAndScatterAddIsItsGradient) {
  using T = TypeParam;
  const int64_t V = 29, C = 37;
  std::mt19937_64 rng(71);
  Vec in = random_vec(rng, V * C);
  Ints rows = random_ints(rng, 13, 0, V);
  rows[7] = rows[3] = rows[0];  // repeats
  const int64_t n = static_cast<int64_t>(rows.size());
  Buf<T> out(Shape{n, C}), tin(in, {V, C});
  cpu().gather_rows(out.t(), tin.t(), ints(rows));
  expect_close(out.vec(), ref::gather_rows(in, rows, C), Tol{0, 0}, "gather (a copy: exact)");

  const Vec w = random_vec(rng, n * C), d_in0 = random_vec(rng, V * C);
  auto loss = [&] { return dot(w, ref::gather_rows(in, rows, C)); };
  const Vec g = fd_gradient(in, loss);
  Buf<T> d_in(d_in0, {V, C}), d_out(w, {n, C});
  cpu().scatter_add_rows(d_in.t(), d_out.t(), ints(rows));
  expect_close(d_in.vec(), plus(d_in0, g), tol::gradient<T>(4, 4), "scatter_add (+=)");
}

// ---------------------------------------------------------------- cross-entropy

MICS_TYPED_SUITE(CrossEntropy);

template <class T>
void check_cross_entropy(int64_t m, int64_t v, double logit_range, bool with_grad, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "M=" << m << " V=" << v << " logits in +-" << logit_range);
  std::mt19937_64 rng(seed);
  Vec logits = random_vec(rng, m * v, -logit_range, logit_range);
  Ints labels = random_ints(rng, m, 0, static_cast<int32_t>(v));
  labels[1] = labels[m - 1] = -100;  // ignored rows
  labels[2] = -1;                    // any negative label is ignored
  const double grad_scale = 0.37;

  Buf<T> losses(Shape{m}), d_logits(Shape{m, v}), tlog(logits, {m, v});
  cpu().cross_entropy(losses.t(), with_grad ? d_logits.t() : Tensor{}, tlog.t(), ints(labels), grad_scale);
  // log-sum-exp of V terms: a few roundings relative to the largest logit.
  const Vec ref_losses = ref::cross_entropy(logits, labels, v);
  expect_close(losses.vec(), ref_losses, tol::forward<T>(8, logit_range + std::log(double(v))), "losses");
  for (int64_t i : {1, 2}) EXPECT_EQ(losses.data[i], T(0)) << "ignored row " << i;
  if (!with_grad) return;

  // d_logits is the gradient of grad_scale * sum(losses) (each row's loss sees only its row).
  auto loss = [&] { return grad_scale * dot(Vec(m, 1.0), ref::cross_entropy(logits, labels, v)); };
  const Vec g = fd_gradient(logits, loss);
  // softmax - onehot: each entry a few roundings of values <= 1, times grad_scale.
  expect_close(d_logits.vec(), g, tol::gradient<T>(8, grad_scale), "d_logits");
  for (int64_t j = 0; j < v; ++j) ASSERT_EQ(d_logits.data[v + j], T(0)) << "ignored row, column " << j;

  // d_logits may alias logits: the same losses and gradient as the separate buffers.
  Buf<T> in_place(logits, {m, v}), losses2(Shape{m});
  cpu().cross_entropy(losses2.t(), in_place.t(), in_place.t(), ints(labels), grad_scale);
  expect_close(losses2.vec(), losses.vec(), Tol{0, 0}, "losses with aliased d_logits");
  expect_close(in_place.vec(), d_logits.vec(), Tol{0, 0}, "d_logits aliasing logits");
}

TYPED_TEST(CrossEntropy, LossesAndGradientMatchReference) {
  check_cross_entropy<TypeParam>(11, 29, 3.0, true, 81);
}

TYPED_TEST(CrossEntropy, LargerShapeWithLargeLogits) {
  // Logits up to +-30 would overflow a naive exp in fp32: the max shift must be there.
  check_cross_entropy<TypeParam>(67, 131, 30.0, false, 82);
  check_cross_entropy<TypeParam>(67, 131, 100.0, false, 83);
}

// ---------------------------------------------------------------- dropout

MICS_TYPED_SUITE(Dropout);

TYPED_TEST(Dropout, KeepRateScaleAndBackwardMask) {
  using T = TypeParam;
  const int64_t n = (1 << 17) + 3;
  std::mt19937_64 rng(91);
  const Vec in = random_vec(rng, n, 0.5, 1.5);  // nonzero, so a zero output marks a drop
  for (float p : {0.1f, 0.5f}) {
    SCOPED_TRACE(testing::Message() << "p=" << p);
    const DropoutSpec spec{p, 1234};
    Buf<T> out(Shape{n}), tin(in, {n});
    cpu().dropout_forward(out.t(), tin.t(), spec);
    const double scale = 1.0 / (1.0 - double(p));
    int64_t kept = 0, kept_pairs = 0;
    Vec expect(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const bool k = out.data[i] != T(0);
      kept += k;
      if (i > 0) kept_pairs += k && out.data[i - 1] != T(0);
      expect[i] = k ? in[i] * scale : 0.0;
    }
    // Kept entries equal in / (1 - p): one rounding (and one in the scale).
    expect_close(out.vec(), expect, tol::forward<T>(4, 1.5 * scale), "kept entries scaled by 1/(1-p)");
    // Binomial keep count: 5 standard deviations (false-alarm rate ~6e-7); neighbours
    // independent (pair rate (1-p)^2).
    const double q = 1.0 - double(p), sd = std::sqrt(q * (1 - q) / double(n));
    EXPECT_NEAR(double(kept) / double(n), q, 5 * sd) << "keep rate";
    const double sd2 = std::sqrt(q * q * (1 - q * q) / double(n));
    EXPECT_NEAR(double(kept_pairs) / double(n - 1), q * q, 8 * sd2) << "adjacent keep rate";

    // Backward: the same mask and scale applied to the incoming gradient.
    const Vec g = random_vec(rng, n);
    Vec g_expect(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) g_expect[i] = out.data[i] != T(0) ? g[i] * scale : 0.0;
    Buf<T> d_in(Shape{n}), d_out(g, {n});
    cpu().dropout_backward(d_in.t(), d_out.t(), spec);
    expect_close(d_in.vec(), g_expect, tol::forward<T>(4, scale), "backward = forward mask");

    // In place, and the same seed again: identical output (the mask is a function of the seed).
    Buf<T> inplace(in, {n});
    cpu().dropout_forward(inplace.t(), inplace.t(), spec);
    expect_close(inplace.vec(), out.vec(), Tol{0, 0}, "in place, same seed");
    // Another seed: a different mask (agreement rate q^2 + p^2 < 1).
    Buf<T> other(Shape{n});
    cpu().dropout_forward(other.t(), tin.t(), DropoutSpec{p, 1235});
    int64_t agree = 0;
    for (int64_t i = 0; i < n; ++i) agree += (other.data[i] != T(0)) == (out.data[i] != T(0));
    EXPECT_NEAR(double(agree) / double(n), q * q + double(p) * p, 0.01) << "seed independence";
  }
}

TEST(Dropout, MaskIndependentOfDtypeAndDisabledIsIdentity) {
  const int64_t n = 1001;
  const DropoutSpec spec{0.3f, 99};
  std::vector<float> in32(n, 1.0f), out32(n);
  std::vector<double> in64(n, 1.0), out64(n);
  cpu().dropout_forward(Tensor(out32.data(), {n}), Tensor(in32.data(), {n}), spec);
  cpu().dropout_forward(Tensor(out64.data(), {n}), Tensor(in64.data(), {n}), spec);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out32[i] == 0, out64[i] == 0) << "index " << i;
  std::mt19937_64 rng(92);
  Vec x = random_vec(rng, n), y(n);
  cpu().dropout_forward(Tensor(y.data(), {n}), Tensor(x.data(), {n}), DropoutSpec{0.0f, 5});
  expect_close(y, x, Tol{0, 0}, "p = 0 copies");
}

// ---------------------------------------------------------------- adamw (fp32 only)

struct AdamCase {
  const char* name;
  AdamWSpec spec;  // spec.step is the first step
  int steps;
};

ref::AdamWParams to_ref(const AdamWSpec& s) {
  // The spec's fp32 hyper-parameters, exactly as the backend receives them.
  return {s.lr, s.beta1, s.beta2, s.eps, s.weight_decay, s.grad_scale, s.step};
}

class AdamW : public ::testing::TestWithParam<AdamCase> {};

TEST_P(AdamW, StepsMatchFloat64PyTorchUpdate) {
  const AdamCase& c = GetParam();
  const int64_t n = 1031;
  std::mt19937_64 rng(101);
  Vec p = random_vec(rng, n);
  // A later first step starts from a warm state.
  Vec m = c.spec.step > 1 ? random_vec(rng, n, -0.1, 0.1) : Vec(n, 0.0);
  Vec v = c.spec.step > 1 ? random_vec(rng, n, 0.0, 0.01) : Vec(n, 0.0);
  std::vector<float> fp(p.begin(), p.end()), fm(m.begin(), m.end()), fv(v.begin(), v.end());
  Vec p_traj = p, m_traj = m, v_traj = v;  // pure fp64 trajectory

  for (int s = 0; s < c.steps; ++s) {
    SCOPED_TRACE(testing::Message() << "step " << c.spec.step + s);
    // Gradients: ordinary, tiny (where eps dominates the denominator) and exact zeros.
    Vec g = random_vec(rng, n);
    std::uniform_real_distribution<double> expo(-10, -7);
    for (int64_t i = 0; i < n; i += 7) g[i] = static_cast<float>(g[i] * std::pow(10.0, expo(rng)));
    for (int64_t i = 3; i < n; i += 101) g[i] = 0;
    std::vector<float> fg(g.begin(), g.end());

    AdamWSpec spec = c.spec;
    spec.step = c.spec.step + s;
    const Vec p0(fp.begin(), fp.end());
    Vec rp = p0, rm(fm.begin(), fm.end()), rv(fv.begin(), fv.end());
    ref::adamw_step(rp, g, rm, rv, to_ref(spec));
    ref::adamw_step(p_traj, g, m_traj, v_traj, to_ref(spec));
    cpu().adamw(Tensor(fp.data(), {n}), Tensor(fg.data(), {n}), Tensor(fm.data(), {n}),
                Tensor(fv.data(), {n}), spec, Tensor{});

    // One step from the same fp32 state: m, v are a few roundings of values of size
    // |m| + |g|, |v| + g^2 (cancellation in m); the parameter change p_new - p_old is
    // compared (not p itself), to the fp32 rounding of p (a few u |p|) plus 1e-5 relative.
    const double gs = double(spec.grad_scale) * max_abs(g);
    expect_close(Vec(fm.begin(), fm.end()), rm, tol::forward<float>(4, max_abs(rm) + gs), "m");
    expect_close(Vec(fv.begin(), fv.end()), rv, tol::forward<float>(4, max_abs(rv) + gs * gs), "v");
    Vec dp(n), dp_ref(n);
    for (int64_t i = 0; i < n; ++i) dp[i] = double(fp[i]) - p0[i], dp_ref[i] = rp[i] - p0[i];
    expect_close(dp, dp_ref, tol::forward<float>(4, max_abs(p0)), "p_new - p_old");
  }
  // The whole fp32 trajectory vs. pure fp64: rounding of p, ~u |p| per step.
  expect_close(Vec(fp.begin(), fp.end()), p_traj, tol::forward<float>(4 * c.steps, max_abs(p_traj)),
               "param after all steps");
}

INSTANTIATE_TEST_SUITE_P(
    Ops, AdamW,
    ::testing::Values(
        AdamCase{"from_step1_decay_scaled", AdamWSpec{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 0.5f}, 5},
        AdamCase{"warm_step100_no_decay", AdamWSpec{3e-3f, 0.9f, 0.95f, 1e-6f, 0.0f, 100, 2.0f}, 4}),
    [](const testing::TestParamInfo<AdamCase>& info) { return std::string(info.param.name); });

TEST(AdamWErrors, RejectsNonFp32) {
  std::vector<double> x(4, 0.0);
  Tensor t(x.data(), Shape{4});
  EXPECT_THROW(cpu().adamw(t, t, t, t, AdamWSpec{}, Tensor{}), ShapeError);
}

// ---------------------------------------------------------------- element-wise

MICS_TYPED_SUITE(Elementwise);

TYPED_TEST(Elementwise, AddScaleFillZero) {
  using T = TypeParam;
  const int64_t n = 1031;
  std::mt19937_64 rng(111);
  const Vec a = random_vec(rng, n), b = random_vec(rng, n);
  // One rounding: |fl(x) - x| <= u |x| exactly (the inputs are exact in T).
  const Tol one_rounding{Precision<T>::u, 0};
  Buf<T> out(Shape{n}), ta(a, {n}), tb(b, {n});
  cpu().add(out.t(), ta.t(), tb.t());
  expect_close(out.vec(), plus(a, b), one_rounding, "add");
  cpu().add(ta.t(), ta.t(), tb.t());  // out aliasing a
  expect_close(ta.vec(), out.vec(), Tol{0, 0}, "add in place");

  const double alpha = -0.3;
  Vec scaled(n);
  for (int64_t i = 0; i < n; ++i) scaled[i] = b[i] * alpha;
  cpu().scale(tb.t(), alpha);
  expect_close(tb.vec(), scaled, one_rounding, "scale");

  cpu().fill_zero(tb.t());
  expect_close(tb.vec(), Vec(n, 0.0), Tol{0, 0}, "fill_zero");
}

TYPED_TEST(Elementwise, SumSumSquaresCountNonfinite) {
  using T = TypeParam;
  const int64_t n = 4099;
  std::mt19937_64 rng(112);
  Vec x = random_vec(rng, n, -2, 3);
  Buf<T> tx(x, {n});
  double s = 0, s2 = 0, s_abs = 0;
  for (double v : x) s += v, s2 += v * v, s_abs += v * v + std::abs(v);
  // Accumulated in double: recursive summation errs by at most n u64 sum|x_i|.
  const Tol t{0, double(n) * Precision<double>::u * s_abs};
  expect_close({cpu().sum(tx.t())}, {s}, t, "sum");
  expect_close({cpu().sum_squares(tx.t())}, {s2}, t, "sum_squares");
  double left = -1;  // sum_squares_into: the same sum, written where it is asked for
  cpu().sum_squares_into(Tensor{&left, DType::f64, {1}}, tx.t());
  EXPECT_EQ(left, cpu().sum_squares(tx.t()));
  EXPECT_THROW(cpu().sum_squares_into(Tensor{&left, DType::f64, {2}}, tx.t()), ShapeError);
  EXPECT_EQ(cpu().count_nonfinite(tx.t()), 0);

  // Extreme but finite values must not count; each NaN / Inf must.
  tx.data[10] = std::numeric_limits<T>::max();
  tx.data[11] = std::numeric_limits<T>::denorm_min();
  tx.data[12] = -std::numeric_limits<T>::max();
  int64_t planted = 0;
  for (int64_t i = 100; i < n; i += 397, ++planted) {
    const int kind = static_cast<int>(planted % 3);
    tx.data[i] = kind == 0   ? std::numeric_limits<T>::quiet_NaN()
                 : kind == 1 ? std::numeric_limits<T>::infinity()
                             : -std::numeric_limits<T>::infinity();
  }
  EXPECT_EQ(cpu().count_nonfinite(tx.t()), planted);
}

TEST(Cast, ConvertsBetweenFp32AndFp64) {
  const int64_t n = 517;
  std::mt19937_64 rng(113);
  std::uniform_real_distribution<double> dist(-1e3, 1e3);
  Vec wide(n);
  for (double& v : wide) v = dist(rng);  // not representable in fp32
  std::vector<float> narrow(n);
  cpu().cast(Tensor(narrow.data(), {n}), Tensor(wide.data(), {n}));
  // Round to nearest: within half an fp32 ulp, i.e. u |x|.
  expect_close(Vec(narrow.begin(), narrow.end()), wide, Tol{Precision<float>::u, 0}, "f64 -> f32");
  Vec back(n);
  cpu().cast(Tensor(back.data(), {n}), Tensor(narrow.data(), {n}));
  expect_close(back, Vec(narrow.begin(), narrow.end()), Tol{0, 0}, "f32 -> f64 (exact)");
  Vec copy(n);
  cpu().cast(Tensor(copy.data(), {n}), Tensor(wide.data(), {n}));
  expect_close(copy, wide, Tol{0, 0}, "same-dtype cast copies");
}

// ---------------------------------------------------------------- argument errors

TEST(ArgumentErrors, ShapeMismatchThrowsShapeError) {
  std::vector<float> buf(1000, 0.0f);
  auto t = [&](Shape s) { return Tensor(buf.data(), s); };
  Ints ids(14, 0);
  // linear: out must be [M, N].
  EXPECT_THROW(cpu().linear_forward(t({7, 4}), t({7, 13}), t({5, 13}), Tensor{}), ShapeError);
  EXPECT_THROW(cpu().linear_forward(t({7, 5}), t({7, 13}), t({5, 13}), t({4})), ShapeError);
  EXPECT_THROW(cpu().linear_backward(t({7, 13}), t({5, 12}), Tensor{}, t({7, 5}), t({7, 13}),
                                     t({5, 13}), Accumulate::no),
               ShapeError);
  EXPECT_THROW(cpu().layernorm_forward(t({7, 37}), t({7}), t({7}), t({7, 37}), t({37}), t({36}), 1e-5f),
               ShapeError);
  const AttentionDims dims{2, 7, 3, 5, false};
  EXPECT_THROW(cpu().attention_forward(t({2, 7, 15}), t({2, 3, 7, 6}), t({2, 7, 45}), IntTensor{},
                                       dims, DropoutSpec{}),
               ShapeError);
  EXPECT_THROW(cpu().cross_entropy(t({7}), Tensor{}, t({7, 29}), ints(ids), 1.0), ShapeError);
  EXPECT_THROW(cpu().add(t({10}), t({10}), t({11})), ShapeError);
}

TEST(ArgumentErrors, UnsupportedOrMixedDtypeThrows) {
  EXPECT_FALSE(cpu().supports(DType::bf16));
  EXPECT_TRUE(cpu().supports(DType::f32));
  EXPECT_TRUE(cpu().supports(DType::f64));
  std::vector<uint16_t> raw(1000, 0);
  auto bf = [&](Shape s) { return Tensor(raw.data(), DType::bf16, s); };
  EXPECT_THROW(cpu().linear_forward(bf({7, 5}), bf({7, 13}), bf({5, 13}), Tensor{}), ShapeError);
  EXPECT_THROW(cpu().gelu_forward(bf({10}), bf({10}), GeluKind::erf), ShapeError);
  EXPECT_THROW(cpu().add(bf({10}), bf({10}), bf({10})), ShapeError);
  std::vector<float> f(100);
  std::vector<double> d(100);
  EXPECT_THROW(cpu().linear_forward(Tensor(f.data(), {2, 3}), Tensor(d.data(), {2, 4}),
                                    Tensor(f.data(), {3, 4}), Tensor{}),
               ShapeError);
}

}  // namespace
}  // namespace mics
