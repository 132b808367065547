// The CUDA LayerNorm row kernels (kernels/cuda/layernorm_kernels.cuh) and the column
// reductions of its parameter gradients and the bias gradient (column_reduce_kernels.cuh), the cross-entropy
// kernel (cross_entropy_kernels.cuh) and the element-wise map kernels with their GELU and
// dropout functions (vector_map_kernels.cuh, elementwise_ops.cuh), compiled for the host and run under tests/emulation/cuda_emulator.h:
// against float64 with tests/cuda/test_cuda_ops.cpp's tolerances (device_numerics.h), and
// the 16-byte path against the element-by-element one bit for bit. Both were rewritten
// after the last GPU run (rows held in registers, the residual add fused, 16-byte
// accesses, the cross-entropy's single-pass softmax statistics), so this is what checks
// their indexing where there is no GPU; CudaLayerNorm, CudaCrossEntropy and CudaGelu run
// the same kernels on one. Every array is followed by a guard that must
// stay untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numbers>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/device_numerics.h"
#include "tests/cuda/host_dtype.h"
#include "tests/numerics/expect_close.h"

// The emulator stands in for the CUDA headers the kernels expect, so it comes first.
#include "tests/emulation/cuda_emulator.h"
#include "tests/emulation/guard_bytes.h"
#include "kernels/cuda/column_reduce_kernels.cuh"
#include "kernels/cuda/cross_entropy_kernels.cuh"
#include "kernels/cuda/elementwise_ops.cuh"
#include "kernels/cuda/layernorm_kernels.cuh"
#include "kernels/cuda/vector_map_kernels.cuh"

namespace mics {
namespace {

using device_test::kTol;
using device_test::kU32;
using device_test::max_abs;
using device_test::random_vec;
using device_test::tol;

Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

// A float64 tensor on the CPU backend, for the references.
struct Ref {
  Vec v;
  Shape shape;
  Tensor t() { return Tensor{v.data(), DType::f64, shape}; }
};
Ref ref(Shape s) { return {Vec(static_cast<size_t>(s.numel()), 0.0), s}; }
Ref ref(const Vec& v, Shape s) { return {v, s}; }

// ---------------------------------------------------------------- emulated device buffers

constexpr size_t kGuard = 64;
using emulation::guard_value;
using emulation::same_bits;

// n entries (`offset` of them before the data, to misalign it), then the guard.
template <class E>
struct Buffer {
  std::vector<E> mem;
  size_t offset = 0, n = 0;
  Buffer(size_t count, size_t off = 0) : mem(off + count + kGuard, guard_value<E>()), offset(off), n(count) {}
  Buffer(const Vec& values, size_t off = 0) : Buffer(values.size(), off) {
    for (size_t i = 0; i < n; ++i) mem[offset + i] = cuda::from_f<E>(static_cast<float>(values[i]));
  }
  E* data() { return mem.data() + offset; }
  Vec get() const {
    Vec out(n);
    for (size_t i = 0; i < n; ++i) out[i] = cuda::to_f(mem[offset + i]);
    return out;
  }
  // The guards before and after the data are as they were written.
  void expect_guards(const std::string& what) const {
    const E g = guard_value<E>();
    size_t touched = 0;
    for (size_t i = 0; i < mem.size(); ++i)
      if ((i < offset || i >= offset + n) && !same_bits(mem[i], g)) ++touched;
    EXPECT_EQ(touched, 0u) << what << ": " << touched << " guard entries written";
  }
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> b(n * sizeof(E));
    std::memcpy(b.data(), mem.data() + offset, b.size());
    return b;
  }
};

template <class E>
void expect_same_bits(const Buffer<E>& a, const Buffer<E>& b, const std::string& what) {
  EXPECT_TRUE(a.bytes() == b.bytes()) << what;
}

template <class E> constexpr DType dtype_for();
template <> constexpr DType dtype_for<float>() { return DType::f32; }
template <> constexpr DType dtype_for<cuda::bf16>() { return DType::bf16; }
template <> constexpr DType dtype_for<cuda::f16>() { return DType::f16; }

// ---------------------------------------------------------------- LayerNorm

constexpr float kLnEps = 1e-5f;

// cuda::layernorm_forward_kernel over rows x cols as layernorm.cu launches it.
template <bool kVector, bool kResidual, class T, class S>
void forward(Buffer<T>& out, Buffer<T>* sum, Buffer<S>& mean, Buffer<S>& rstd, Buffer<T>& a, Buffer<T>* b,
             Buffer<T>& gamma, Buffer<T>& beta, int64_t rows, int64_t cols) {
  cuda_emulator::launch(dim3{static_cast<unsigned>(rows)}, cuda::row_block_threads(cols), 0,
                        cuda::layernorm_forward_kernel<kVector, kResidual, T, S>, out.data(),
                        sum != nullptr ? sum->data() : nullptr, mean.data(), rstd.data(),
                        static_cast<const T*>(a.data()), b != nullptr ? static_cast<const T*>(b->data()) : nullptr,
                        static_cast<const T*>(gamma.data()), static_cast<const T*>(beta.data()), cols, kLnEps);
}

template <bool kVector, class T, class S>
void backward(Buffer<T>& d_in, Buffer<T>& d_out, Buffer<T>& in, Buffer<T>& gamma, Buffer<S>& mean, Buffer<S>& rstd,
              int64_t rows, int64_t cols, bool accumulate) {
  cuda_emulator::launch(dim3{static_cast<unsigned>(rows)}, cuda::row_block_threads(cols), 0,
                        cuda::layernorm_backward_kernel<kVector, T, S>, d_in.data(),
                        static_cast<const T*>(d_out.data()), static_cast<const T*>(in.data()),
                        static_cast<const T*>(gamma.data()), static_cast<const S*>(mean.data()),
                        static_cast<const S*>(rstd.data()), cols, accumulate);
}

// Widths: odd ones read element by element (a tail pack), multiples of 8 take 16-byte
// packs; 2560 is BERT's, 4099 gives threads several packs, 16384 is the widest (512
// threads of 4 packs).
const std::vector<std::pair<int64_t, int64_t>> kRowShapes = {{5, 1},  {9, 8},     {37, 53},  {33, 40},
                                                              {3, 4099}, {4, 2560}, {2, 16384}};

template <class T, class S>
void check_forward() {
  const DType t = dtype_for<T>(), st = dtype_for<S>();
  for (auto [m, c] : kRowShapes)
    for (bool residual : {false, true}) {
      SCOPED_TRACE(testing::Message() << dtype_name(t) << " stats " << dtype_name(st) << " M=" << m << " C=" << c
                                      << (residual ? " with the residual add" : ""));
      std::mt19937_64 rng(41);
      const Vec a = rounded(t, random_vec(rng, m * c, 1.0, 3.0)), b = rounded(t, random_vec(rng, m * c, -0.5, 0.5));
      const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
      Buffer<T> d_a(a), d_b(b), d_g(gamma), d_be(beta), d_out(m * c), d_sum(m * c);
      Buffer<S> d_mean(m), d_rstd(m);
      const bool vector = c % cuda::kMapWidth == 0;
      auto run = [&](auto kVector) {
        if (residual)
          forward<decltype(kVector)::value, true>(d_out, &d_sum, d_mean, d_rstd, d_a, &d_b, d_g, d_be, m, c);
        else
          forward<decltype(kVector)::value, false>(d_out, static_cast<Buffer<T>*>(nullptr), d_mean, d_rstd, d_a,
                                                   static_cast<Buffer<T>*>(nullptr), d_g, d_be, m, c);
      };
      vector ? run(std::true_type{}) : run(std::false_type{});
      Vec x = a;
      if (residual) {
        // The fp32 sum of two dtype values, rounded once more to the dtype (as `add`).
        Vec exact(a.size());
        for (size_t i = 0; i < a.size(); ++i) exact[i] = a[i] + b[i];
        x = d_sum.get();
        expect_close(x, exact, tol::Tol{kTol(t).u + kU32, t == DType::f16 ? 0x1p-25 : 0.0}, "sum");
        d_sum.expect_guards("sum");
      }
      Ref r_out = ref(Shape{m, c}), r_mean = ref(Shape{m}), r_rstd = ref(Shape{m}), r_in = ref(x, {m, c}),
          r_g = ref(gamma, {c}), r_b = ref(beta, {c});
      cpu().layernorm_forward(r_out.t(), r_mean.t(), r_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
      // fp32 statistics: C-term sums (sqrt(C) growth) of values ~2; out = xhat gamma + beta.
      const double sc = std::sqrt(double(c)), rs = max_abs(r_rstd.v);
      expect_close(d_out.get(), r_out.v, tol(t, 4 * sc, 2 * 1.5 + 1), "out");
      expect_close(d_mean.get(), r_mean.v, tol(st, 4 * sc, 3), "mean");
      expect_close(d_rstd.get(), r_rstd.v, tol(st, 4 * sc, rs), "rstd");
      d_out.expect_guards("out");
      d_mean.expect_guards("mean");
      d_rstd.expect_guards("rstd");
      d_a.expect_guards("a");
    }
}

template <class T, class S>
void check_backward() {
  const DType t = dtype_for<T>(), st = dtype_for<S>();
  for (auto [m, c] : kRowShapes)
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(testing::Message() << dtype_name(t) << " stats " << dtype_name(st) << " M=" << m << " C=" << c
                                      << (accumulate ? " d_in +=" : " d_in ="));
      std::mt19937_64 rng(43);
      const Vec in = rounded(t, random_vec(rng, m * c, 1.0, 3.0));
      const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
      const Vec w = rounded(t, random_vec(rng, m * c)), d_in0 = rounded(t, random_vec(rng, m * c));
      // The saved statistics as the forward leaves them in the stats dtype: one input for both.
      Ref f_out = ref(Shape{m, c}), f_mean = ref(Shape{m}), f_rstd = ref(Shape{m}), r_in = ref(in, {m, c}),
          r_g = ref(gamma, {c}), r_b = ref(beta, {c});
      cpu().layernorm_forward(f_out.t(), f_mean.t(), f_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
      const Vec mean = rounded(st, f_mean.v), rstd = rounded(st, f_rstd.v);
      Ref r_din = ref(d_in0, {m, c}), r_dg = ref(Shape{c}), r_db = ref(Shape{c}), r_w = ref(w, {m, c}),
          r_mean = ref(mean, {m}), r_rstd = ref(rstd, {m});
      cpu().layernorm_backward(r_din.t(), r_dg.t(), r_db.t(), r_w.t(), r_in.t(), r_g.t(), r_mean.t(), r_rstd.t(),
                               accumulate ? Accumulate::yes : Accumulate::no);
      Buffer<T> d_din(d_in0), d_w(w), d_x(in), d_gam(gamma);
      Buffer<S> d_mean(mean), d_rstd(rstd);
      if (c % cuda::kMapWidth == 0)
        backward<true>(d_din, d_w, d_x, d_gam, d_mean, d_rstd, m, c, accumulate);
      else
        backward<false>(d_din, d_w, d_x, d_gam, d_mean, d_rstd, m, c, accumulate);
      // As CudaLayerNorm: C-term means of |g| <= 1.5 times rstd.
      const double sc = std::sqrt(double(c)), rs = max_abs(rstd);
      expect_close(d_din.get(), r_din.v, tol(t, 8 * sc, 1.5 * rs * 4 + 1), "d_in");
      d_din.expect_guards("d_in");
    }
}

TEST(EmulatedCudaLayerNorm, ForwardMatchesFloat64) {
  check_forward<float, float>();
  check_forward<cuda::bf16, cuda::bf16>();
  check_forward<cuda::f16, cuda::f16>();
  check_forward<cuda::bf16, float>();
  check_forward<cuda::f16, float>();
}

TEST(EmulatedCudaLayerNorm, InputGradientMatchesFloat64AndAccumulates) {
  check_backward<float, float>();
  check_backward<cuda::bf16, cuda::bf16>();
  check_backward<cuda::f16, float>();
}

// The 16-byte path and the element-by-element one (what layernorm.cu launches for a
// misaligned pointer) give the same bits; the sum may be written over `a`.
template <class T>
void check_paths_agree() {
  const DType t = dtype_for<T>();
  const int64_t m = 3, c = 2560;
  std::mt19937_64 rng(47);
  const Vec a = rounded(t, random_vec(rng, m * c, 1.0, 3.0)), b = rounded(t, random_vec(rng, m * c));
  const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
  const Vec dy = rounded(t, random_vec(rng, m * c)), d_in0 = rounded(t, random_vec(rng, m * c));
  Buffer<T> v_a(a), v_b(b), v_g(gamma), v_be(beta), v_sum(m * c), v_out(m * c), v_din(d_in0), v_dy(dy);
  Buffer<T> e_a(a, 1), e_b(b, 1), e_g(gamma, 1), e_be(beta, 1), e_sum(m * c, 1), e_out(m * c, 1), e_din(d_in0, 1),
      e_dy(dy, 1);
  Buffer<float> v_mean(m), v_rstd(m), e_mean(m), e_rstd(m);
  forward<true, true>(v_out, &v_sum, v_mean, v_rstd, v_a, &v_b, v_g, v_be, m, c);
  forward<false, true>(e_out, &e_sum, e_mean, e_rstd, e_a, &e_b, e_g, e_be, m, c);
  backward<true>(v_din, v_dy, v_sum, v_g, v_mean, v_rstd, m, c, true);
  backward<false>(e_din, e_dy, e_sum, e_g, e_mean, e_rstd, m, c, true);
  expect_same_bits(e_sum, v_sum, "sum");
  expect_same_bits(e_out, v_out, "out");
  expect_same_bits(e_mean, v_mean, "mean");
  expect_same_bits(e_rstd, v_rstd, "rstd");
  expect_same_bits(e_din, v_din, "d_in (+=)");
  // The sum written over a (as the pre-LN block does with its residual stream).
  Buffer<float> w_mean(m), w_rstd(m);
  Buffer<T> w_out(m * c);
  forward<true, true>(w_out, &v_a, w_mean, w_rstd, v_a, &v_b, v_g, v_be, m, c);
  expect_same_bits(v_a, v_sum, "sum written over a");
  expect_same_bits(w_out, v_out, "out with the sum over a");
  for (const auto* buf : {&e_a, &e_sum, &e_out, &e_din, &v_a, &v_out})
    buf->expect_guards("unaligned/aligned buffers");
}

TEST(EmulatedCudaLayerNorm, SixteenBytePathsMatchElementPathsBitForBit) {
  check_paths_agree<float>();
  check_paths_agree<cuda::bf16>();
  check_paths_agree<cuda::f16>();
}

// ---------------------------------------------------------------- column reductions

// column_reduce.cuh's two stages as it launches them (column_grid), the partials followed
// by a guard; the fold on a short grid (2 blocks of 64 threads), so that its threads stride.
template <bool kVector, class T, int kOutputs, class Term>
void column_reduce(cuda::ColumnOutputs<T, kOutputs> outs, int64_t rows, int64_t cols, Term term, bool accumulate) {
  const cuda::ColumnGrid g = cuda::column_grid(rows, cols);
  const auto floats = static_cast<size_t>(cuda::column_partials_floats(rows, cols, kOutputs));
  std::vector<float> partials(floats + kGuard, guard_value<float>());
  cuda_emulator::launch(dim3{static_cast<unsigned>(g.column_blocks), static_cast<unsigned>(g.chunks)},
                        cuda::kColumnBlockThreads, 0, cuda::column_partials_kernel<kVector, kOutputs, Term>,
                        partials.data(), rows, cols, g.chunk_rows, term);
  size_t written_past = 0, unwritten = 0;
  for (size_t i = 0; i < partials.size(); ++i)
    (i < floats ? unwritten : written_past) += same_bits(partials[i], guard_value<float>()) == (i < floats) ? 1 : 0;
  EXPECT_EQ(unwritten, 0u) << "partials left unwritten";
  EXPECT_EQ(written_past, 0u) << "partials written past the " << floats << " floats";
  cuda_emulator::launch(dim3{2}, 64, 0, cuda::column_fold_kernel<T, kOutputs>, outs,
                        static_cast<const float*>(partials.data()), g.chunks, cols, accumulate);
}

// Shapes: element paths (odd widths, a tail pack; 259: a second column block holding one
// partial pack), 16-byte packs (8, 264: two column blocks, the second one pack wide; 2560:
// ten), one chunk of rows and several (300: 3 chunks; 8200: 64 chunks of 129 rows, the
// last of 73), and no rows at all (zeros written, or nothing added).
const std::vector<std::pair<int64_t, int64_t>> kColumnShapes = {{5, 1},   {9, 8},    {37, 53}, {300, 40}, {20, 259},
                                                                 {40, 264}, {130, 2560}, {8200, 16}, {0, 24}};

template <class T, class S>
void check_layernorm_param_gradients() {
  const DType t = dtype_for<T>(), st = dtype_for<S>();
  for (auto [m, c] : kColumnShapes)
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(testing::Message() << dtype_name(t) << " stats " << dtype_name(st) << " M=" << m << " C=" << c
                                      << (accumulate ? " +=" : " ="));
      std::mt19937_64 rng(53);
      const Vec in = rounded(t, random_vec(rng, m * c, 1.0, 3.0)), w = rounded(t, random_vec(rng, m * c));
      const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
      const Vec d_g0 = rounded(t, random_vec(rng, c)), d_b0 = rounded(t, random_vec(rng, c));
      Ref f_out = ref(Shape{m, c}), f_mean = ref(Shape{m}), f_rstd = ref(Shape{m}), r_in = ref(in, {m, c}),
          r_g = ref(gamma, {c}), r_b = ref(beta, {c});
      if (m > 0) cpu().layernorm_forward(f_out.t(), f_mean.t(), f_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
      const Vec mean = rounded(st, f_mean.v), rstd = rounded(st, f_rstd.v);
      Ref r_din = ref(Shape{m, c}), r_dg = ref(accumulate ? d_g0 : Vec(c, 0.0), {c}),
          r_db = ref(accumulate ? d_b0 : Vec(c, 0.0), {c}), r_w = ref(w, {m, c}), r_mean = ref(mean, {m}),
          r_rstd = ref(rstd, {m});
      if (m > 0)
        cpu().layernorm_backward(r_din.t(), r_dg.t(), r_db.t(), r_w.t(), r_in.t(), r_g.t(), r_mean.t(), r_rstd.t(),
                                 Accumulate::yes);
      // Both access paths: 16-byte packs on aligned buffers (where the width allows), the
      // element path on buffers one entry past alignment; the same bits from both.
      std::vector<unsigned char> bits[2][2];
      for (size_t off : {size_t{0}, size_t{1}}) {
        if (off == 0 && c % cuda::kMapWidth != 0) continue;
        Buffer<T> dy(w, off), x(in, off), dg(d_g0, off), db(d_b0, off);
        Buffer<S> mu(mean, off), rs(rstd, off);
        const cuda::LayerNormParamTerms<T, S> terms{dy.data(), x.data(), mu.data(), rs.data(), c};
        const cuda::ColumnOutputs<T, 2> outs{{dg.data(), db.data()}};
        if (off == 0)
          column_reduce<true>(outs, m, c, terms, accumulate);
        else
          column_reduce<false>(outs, m, c, terms, accumulate);
        // As CudaLayerNorm: M-term sums, onto prefills of size 1.
        const double sm = std::sqrt(double(m));
        expect_close(dg.get(), r_dg.v, tol(t, 8 * sm, 2 * sm + 1), "d_gamma");
        expect_close(db.get(), r_db.v, tol(t, 4 * sm, sm + 1), "d_beta");
        dg.expect_guards("d_gamma");
        db.expect_guards("d_beta");
        bits[off][0] = dg.bytes(), bits[off][1] = db.bytes();
      }
      if (c % cuda::kMapWidth == 0) {
        EXPECT_TRUE(bits[0][0] == bits[1][0]) << "d_gamma: 16-byte and element paths differ";
        EXPECT_TRUE(bits[0][1] == bits[1][1]) << "d_beta: 16-byte and element paths differ";
        // Aligned rows, the statistics one entry past alignment (layernorm.cu checks only
        // the rows read as packs): the 16-byte path, the same bits.
        Buffer<T> dy(w), x(in), dg(d_g0), db(d_b0);
        Buffer<S> mu(mean, 1), rs(rstd, 1);
        column_reduce<true>(cuda::ColumnOutputs<T, 2>{{dg.data(), db.data()}}, m, c,
                            cuda::LayerNormParamTerms<T, S>{dy.data(), x.data(), mu.data(), rs.data(), c}, accumulate);
        EXPECT_TRUE(dg.bytes() == bits[0][0] && db.bytes() == bits[0][1]) << "statistics misaligned: other bits";
      }
    }
}

TEST(EmulatedCudaColumnReduce, LayerNormParameterGradientsMatchFloat64OnBothPaths) {
  check_layernorm_param_gradients<float, float>();
  check_layernorm_param_gradients<cuda::bf16, float>();
  check_layernorm_param_gradients<cuda::f16, cuda::f16>();
}

template <class T>
void check_column_sums() {
  const DType t = dtype_for<T>();
  for (auto [m, c] : kColumnShapes)
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(testing::Message() << dtype_name(t) << " M=" << m << " C=" << c << (accumulate ? " +=" : " ="));
      std::mt19937_64 rng(59);
      const Vec x = rounded(t, random_vec(rng, m * c)), prefill = rounded(t, random_vec(rng, c));
      Vec expected = accumulate ? prefill : Vec(c, 0.0);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t k = 0; k < c; ++k) expected[k] += x[r * c + k];
      std::vector<unsigned char> bits[2];
      for (size_t off : {size_t{0}, size_t{1}}) {
        if (off == 0 && c % cuda::kMapWidth != 0) continue;
        Buffer<T> in(x, off), sums(prefill, off);
        const cuda::ColumnValue<T> term{in.data(), c};
        const cuda::ColumnOutputs<T, 1> outs{{sums.data()}};
        if (off == 0)
          column_reduce<true>(outs, m, c, term, accumulate);
        else
          column_reduce<false>(outs, m, c, term, accumulate);
        // As the bias gradients of CudaLinear: M-term sums onto a prefill of size 1.
        const double sm = std::sqrt(double(m));
        expect_close(sums.get(), expected, tol(t, 4 * sm, sm + 1), "column sums");
        sums.expect_guards("column sums");
        bits[off] = sums.bytes();
      }
      if (c % cuda::kMapWidth == 0) {
        EXPECT_TRUE(bits[0] == bits[1]) << "16-byte and element paths differ";
      }
    }
}

TEST(EmulatedCudaColumnReduce, ColumnSumsMatchFloat64OnBothPaths) {
  check_column_sums<float>();
  check_column_sums<cuda::bf16>();
  check_column_sums<cuda::f16>();
}

// ---------------------------------------------------------------- element-wise maps

// A grid of 3 blocks of 32 threads, far fewer than the elements: the grid-stride loops and
// the 16-byte path's hand-over to the n % 8 tail are exercised.
constexpr unsigned kMapBlocks = 3;
constexpr int kMapThreads = 32;

template <class T>
void check_gelu() {
  const DType t = dtype_for<T>();
  for (GeluKind kind : {GeluKind::erf, GeluKind::tanh})
    for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{37 * 53}, size_t{4096 + 5}}) {
      SCOPED_TRACE(testing::Message() << dtype_name(t) << (kind == GeluKind::erf ? " erf" : " tanh") << " n=" << n);
      std::mt19937_64 rng(31);
      Vec in = random_vec(rng, n, -6, 6);
      const double specials[] = {0.0, 1e-4, -1e-4, 10.0, -10.0, 12.0, -12.0};
      for (size_t i = 0; i < n && i < 7; ++i) in[n - 1 - i] = specials[i];
      in = rounded(t, in);
      const Vec w = rounded(t, random_vec(rng, n));
      Ref r_out = ref(Shape{int64_t(n)}), r_in = ref(in, Shape{int64_t(n)}), r_din = ref(Shape{int64_t(n)}),
          r_w = ref(w, Shape{int64_t(n)});
      cpu().gelu_forward(r_out.t(), r_in.t(), kind);
      cpu().gelu_backward(r_din.t(), r_w.t(), r_in.t(), kind);
      const cuda::GeluForwardOp<T> fwd{kind == GeluKind::tanh};
      const cuda::GeluBackwardOp<T> bwd{kind == GeluKind::tanh};
      const double xm = max_abs(in);
      const double amp = 1 + 2 * xm * std::sqrt(2 / std::numbers::pi) * (1 + 3 * 0.044715 * xm * xm);
      std::vector<unsigned char> out_bits[2], din_bits[2];
      for (size_t off : {size_t{0}, size_t{1}}) {  // 16-byte packs, then single elements
        Buffer<T> x(in, off), out(n, off), dy(w, off), din(n, off);
        auto run = [&](auto kVector) {
          constexpr bool v = decltype(kVector)::value;
          cuda_emulator::launch(dim3{kMapBlocks}, kMapThreads, 0, cuda::map_kernel<v, T, decltype(fwd), T>, out.data(),
                                int64_t(n), fwd, static_cast<const T*>(x.data()));
          cuda_emulator::launch(dim3{kMapBlocks}, kMapThreads, 0,
                                cuda::map_kernel<v, T, decltype(bwd), T, T>, din.data(), int64_t(n), bwd,
                                static_cast<const T*>(dy.data()), static_cast<const T*>(x.data()));
        };
        off == 0 ? run(std::true_type{}) : run(std::false_type{});
        // As CudaGelu: a few fp32 roundings; the backward's 1 - s amplified by 2|x| u'(x).
        expect_close(out.get(), r_out.v, tol(t, 4, xm), "gelu forward");
        expect_close(din.get(), r_din.v, tol(t, 4, amp), "gelu backward");
        out.expect_guards("gelu forward");
        din.expect_guards("gelu backward");
        out_bits[off] = out.bytes();
        din_bits[off] = din.bytes();
        // In place (out aliasing x): each element is read before it is written, once.
        Buffer<T> io(in, off);
        auto run_in_place = [&](auto kVector) {
          cuda_emulator::launch(dim3{kMapBlocks}, kMapThreads, 0,
                                cuda::map_kernel<decltype(kVector)::value, T, decltype(fwd), T>, io.data(),
                                int64_t(n), fwd, static_cast<const T*>(io.data()));
        };
        off == 0 ? run_in_place(std::true_type{}) : run_in_place(std::false_type{});
        EXPECT_TRUE(io.bytes() == out_bits[off]) << "gelu forward in place differs";
      }
      EXPECT_TRUE(out_bits[0] == out_bits[1]) << "gelu forward: 16-byte and element paths differ";
      EXPECT_TRUE(din_bits[0] == din_bits[1]) << "gelu backward: 16-byte and element paths differ";
    }
}

TEST(EmulatedCudaElementwise, GeluMatchesFloat64OnBothPaths) {
  check_gelu<float>();
  check_gelu<cuda::bf16>();
  check_gelu<cuda::f16>();
}

// Dropout through the map keeps element i by its flat index alone, on both paths: the CPU
// backend's mask, bit for bit (tests/cuda's CudaDropout checks the same on a GPU).
TEST(EmulatedCudaElementwise, DropoutKeepsTheCpuMaskOnBothPaths) {
  const DType t = DType::bf16;
  const int64_t n = 4096 + 3;
  const float prob = 0.25f;
  const uint64_t seed = 1234;
  std::mt19937_64 rng(5);
  const Vec in = rounded(t, random_vec(rng, size_t(n), 0.5, 1.5));  // no zeros: a dropped entry shows
  std::vector<float> cpu_in(in.begin(), in.end()), cpu_out(static_cast<size_t>(n));
  cpu().dropout_forward(Tensor{cpu_out.data(), DType::f32, {n}}, Tensor{cpu_in.data(), DType::f32, {n}},
                        DropoutSpec{prob, seed});
  const cuda::DropoutOp<cuda::bf16> op{prob, 1.0f / (1.0f - prob), seed};
  for (size_t off : {size_t{0}, size_t{1}}) {
    SCOPED_TRACE(off == 0 ? "16-byte path" : "element path");
    Buffer<cuda::bf16> x(in, off), out(size_t(n), off);
    auto run = [&](auto kVector) {
      cuda_emulator::launch(dim3{kMapBlocks}, kMapThreads, 0,
                            cuda::map_kernel<decltype(kVector)::value, cuda::bf16, decltype(op), cuda::bf16>,
                            out.data(), n, op, static_cast<const cuda::bf16*>(x.data()));
    };
    off == 0 ? run(std::true_type{}) : run(std::false_type{});
    const Vec got = out.get();
    size_t mask_differs = 0, dropped = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      dropped += got[i] == 0.0;
      mask_differs += (got[i] == 0.0) != (cpu_out[i] == 0.0f);
    }
    EXPECT_EQ(mask_differs, 0u);
    EXPECT_NEAR(double(dropped) / double(n), prob, 0.03);
    // Kept entries are scaled by 1 / (1 - p) in fp32 and rounded once to bf16.
    Vec want(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) want[i] = cpu_out[i];
    expect_close(got, rounded(t, want), tol::Tol{0.0, 0.0}, "dropout values");
    out.expect_guards("dropout");
  }
}

// ---------------------------------------------------------------- cross-entropy

// As CudaCrossEntropy: ignored rows (negative labels), loss and gradient against float64,
// the same losses without a gradient and with the gradient written over the logits. Rows
// of an odd vocabulary start at every alignment, so heads, packs and tails all occur; 32
// threads make each thread take several packs of a row.
template <class T>
void check_cross_entropy(int64_t m, int64_t v, double range, uint64_t seed, int threads) {
  const DType t = dtype_for<T>();
  SCOPED_TRACE(testing::Message() << dtype_name(t) << " M=" << m << " V=" << v << " logits in +-" << range << ", "
                                  << threads << " threads");
  std::mt19937_64 rng(seed);
  const Vec logits = rounded(t, random_vec(rng, m * v, -range, range));
  std::vector<int32_t> labels(static_cast<size_t>(m));
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(v - 1));
  for (int32_t& l : labels) l = pick(rng);
  labels[1] = labels[m - 1] = -100;
  labels[2] = -1;
  const double grad_scale = 0.37;
  Ref r_losses = ref(Shape{m}), r_d = ref(Shape{m, v}), r_logits = ref(logits, {m, v});
  cpu().cross_entropy(r_losses.t(), r_d.t(), r_logits.t(), IntTensor{labels.data(), Shape{m}}, grad_scale);
  auto run = [&](Buffer<T>& losses, T* d, Buffer<T>& x, int* error) {
    cuda_emulator::launch(dim3{static_cast<unsigned>(m)}, threads, 0, cuda::cross_entropy_kernel<T>, losses.data(), d,
                          static_cast<const T*>(x.data()), static_cast<const int32_t*>(labels.data()), v,
                          static_cast<float>(grad_scale), error);
  };
  int error = 0;
  Buffer<T> losses(m), d(m * v), x(logits);
  run(losses, d.data(), x, &error);
  EXPECT_EQ(error, 0);
  // log-sum-exp of V terms in fp32, relative to the largest logit; softmax - onehot: a few
  // fp32 roundings of values <= 1, times grad_scale.
  const Vec got_losses = losses.get(), got_d = d.get();
  expect_close(got_losses, r_losses.v, tol(t, 8 + std::sqrt(double(v)), range + std::log(double(v))), "losses");
  expect_close(got_d, r_d.v, tol(t, 8, grad_scale), "d_logits");
  for (int64_t i : {int64_t{1}, int64_t{2}, m - 1}) {
    EXPECT_EQ(got_losses[i], 0.0) << "ignored row " << i;
    for (int64_t j = 0; j < v; ++j) ASSERT_EQ(got_d[i * v + j], 0.0) << "ignored row " << i;
  }
  losses.expect_guards("losses");
  d.expect_guards("d_logits");
  // Without d_logits: the same losses. In place: the same losses and gradient.
  Buffer<T> losses2(m), losses3(m);
  run(losses2, nullptr, x, &error);
  expect_same_bits(losses2, losses, "losses without d_logits");
  run(losses3, x.data(), x, &error);
  expect_same_bits(losses3, losses, "losses with d_logits aliasing logits");
  expect_same_bits(x, d, "d_logits aliasing logits");
  // A gradient buffer aligned unlike the logits takes the element path: the same bits.
  Buffer<T> x2(logits), losses4(m), d_shifted(m * v, 1);
  run(losses4, d_shifted.data(), x2, &error);
  expect_same_bits(d_shifted, d, "d_logits aligned unlike the logits");
  d_shifted.expect_guards("d_logits aligned unlike the logits");
  EXPECT_EQ(error, 0);
}

TEST(EmulatedCudaCrossEntropy, LossesAndGradientMatchFloat64) {
  for (int threads : {32, 256}) {
    check_cross_entropy<float>(11, 29, 3.0, 81, threads);
    check_cross_entropy<cuda::bf16>(67, 131, 30.0, 82, threads);
    check_cross_entropy<cuda::f16>(37, 1031, 100.0, 83, threads);
    check_cross_entropy<cuda::bf16>(5, 50257, 10.0, 84, threads);  // GPT-2's vocabulary
  }
  check_cross_entropy<float>(4, 50257, 10.0, 85, 256);
}

// A label past the vocabulary sets the error bit and leaves its row alone; the other rows
// are computed as usual.
TEST(EmulatedCudaCrossEntropy, LabelOutsideTheVocabularySetsTheErrorBit) {
  const int64_t m = 3, v = 40;
  std::mt19937_64 rng(7);
  const Vec logits = random_vec(rng, m * v, -2, 2);
  const std::vector<int32_t> labels = {3, int32_t(v), 5};
  Buffer<float> losses(Vec(m, -7.0)), d(m * v), x(logits);
  int error = 0;
  cuda_emulator::launch(dim3{unsigned(m)}, 32, 0, cuda::cross_entropy_kernel<float>, losses.data(), d.data(),
                        static_cast<const float*>(x.data()), labels.data(), v, 1.0f, &error);
  EXPECT_EQ(error, cuda::kBadLabel);
  EXPECT_EQ(losses.get()[1], -7.0) << "the bad row's loss is left as it was";
  EXPECT_NE(losses.get()[0], -7.0);
  EXPECT_NE(losses.get()[2], -7.0);
}

}  // namespace
}  // namespace mics
