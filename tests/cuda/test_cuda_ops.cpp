// Op-level numerics of the CUDA backend, in fp32, bf16 and fp16, against the CPU backend
// run in float64 on the same inputs (the CPU backend's fp64 path is itself checked against
// float64 references and finite differences in tests/numerics/test_ops.cpp).
//
// Method: inputs are drawn in double, rounded to the dtype under test, and those exact
// values go to both backends (the CUDA backend in the dtype, the CPU backend in fp64), so
// any difference is the CUDA op's own error. Every comparison is
// |x - ref| <= atol + rtol |ref| with rtol and the unit roundoff from ONE table per dtype
// (kTol below) and atol built from the op's error growth, as in tests/numerics/tolerance.h.
// Outputs are pre-filled with NaN, so an entry an op forgets to write fails.
// Where the CUDA backend promises bits (dropout masks, AdamW, fp32 embedding backward and
// scatter_add, casts), it is compared with the CPU backend's fp32 results bit for bit.
//
// Every test skips when no CUDA device is visible (CI has none). MICS_TOL_REPORT=1 prints
// each comparison's worst error as a fraction of its tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/ops.h"
#include "tests/cuda/device_numerics.h"
#include "tests/cuda/host_dtype.h"
#include "tests/numerics/expect_close.h"

namespace mics {
namespace {


using Ints = std::vector<int32_t>;

#define MICS_REQUIRE_CUDA() \
  if (::mics::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

Backend& gpu() {
  static const std::unique_ptr<Backend> backend = make_cuda_backend(0);
  return *backend;
}
Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

// ---------------------------------------------------------------- the tolerance table
//
// kTol, tol, kU32 and the shared input helpers: tests/cuda/device_numerics.h.
using device_test::expect_qkv_gradient_close;
using device_test::kTol;
using device_test::kU32;
using device_test::largest_score;
using device_test::make_key_keep;
using device_test::max_abs;
using device_test::random_vec;
using device_test::tol;  // hides namespace mics::tol for calls; tol::Tol still names the type
using tol::Tol;

// ---------------------------------------------------------------- device and host buffers

// One device tensor in the dtype under test.
struct Dev {
  DType dtype;
  Shape shape;
  DeviceBuffer buf;
  // NaN everywhere (all-ones bytes are a NaN in fp32, bf16 and fp16).
  Dev(DType t, Shape s) : dtype(t), shape(s), buf(gpu(), bytes_of(t, s)) {
    std::vector<char> ones(buf.bytes(), static_cast<char>(0xff));
    gpu().copy_from_host(buf.data(), ones.data(), ones.size());
  }
  Dev(DType t, Shape s, const Vec& values) : dtype(t), shape(s), buf(gpu(), bytes_of(t, s)) {
    EXPECT_EQ(static_cast<int64_t>(values.size()), s.numel()) << "test bug: buffer size";
    const std::vector<char> bytes = encode(t, values);
    gpu().copy_from_host(buf.data(), bytes.data(), bytes.size());
  }
  Tensor t() const { return buf.view(dtype, shape); }
  Vec get() const {
    std::vector<char> bytes(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
    gpu().copy_to_host(bytes.data(), buf.data(), bytes.size());
    return decode(dtype, bytes);
  }
  static size_t bytes_of(DType t, Shape s) {
    return std::max<size_t>(16, static_cast<size_t>(s.numel()) * dtype_size(t));
  }
};

struct DevInts {
  DeviceBuffer buf;
  int64_t n;
  explicit DevInts(const Ints& v)
      : buf(gpu(), std::max<size_t>(4, v.size() * 4)), n(static_cast<int64_t>(v.size())) {
    gpu().copy_from_host(buf.data(), v.data(), v.size() * 4);
  }
  IntTensor t() const { return IntTensor{static_cast<int32_t*>(buf.data()), Shape{n}}; }
};

// Host fp64 (reference) or fp32 (bit comparisons) storage for the CPU backend.
template <class T>
struct Host {
  std::vector<T> data;
  Shape shape;
  Host(const Vec& v, Shape s) : data(v.begin(), v.end()), shape(s) {}
  explicit Host(Shape s)
      : data(static_cast<size_t>(s.numel()), std::numeric_limits<T>::quiet_NaN()), shape(s) {}
  Tensor t() { return Tensor(data.data(), shape); }
  Vec vec() const { return Vec(data.begin(), data.end()); }
};
using H64 = Host<double>;
using H32 = Host<float>;

IntTensor host_ints(Ints& v) { return IntTensor{v.data(), Shape{static_cast<int64_t>(v.size())}}; }

// ---------------------------------------------------------------- helpers

Ints random_ints(std::mt19937_64& rng, size_t n, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  Ints v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}
int64_t ssize(const Vec& v) { return static_cast<int64_t>(v.size()); }

// Bit-for-bit (NaN never equals): names the first mismatch.
void expect_identical(const Vec& actual, const Vec& expected, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < actual.size(); ++i)
    if (!(actual[i] == expected[i]) && !(actual[i] == 0 && expected[i] == 0)) {
      if (bad++ == 0) first = i;
    }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size()
                     << " entries differ; first at " << first << ": got " << actual[first]
                     << ", expected " << expected[first];
}

const char* dname(DType t) { return dtype_name(t); }

class CudaOps : public ::testing::TestWithParam<DType> {};
std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) {
  return dtype_name(info.param);
}
#define MICS_DTYPE_SUITE(Suite)                                                       \
  INSTANTIATE_TEST_SUITE_P(Cuda, Suite,                                               \
                           ::testing::Values(DType::f32, DType::bf16, DType::f16), \
                           dtype_param_name)

// ---------------------------------------------------------------- device

TEST(CudaDevice, BackendBasics) {
  MICS_REQUIRE_CUDA();
  std::printf("  device 0: %s, %d device(s)\n", cuda_device_name(0).c_str(), cuda_device_count());
  EXPECT_STREQ(gpu().name(), "cuda");
  EXPECT_TRUE(gpu().supports(DType::f32));
  EXPECT_TRUE(gpu().supports(DType::bf16));
  EXPECT_TRUE(gpu().supports(DType::f16));
  EXPECT_FALSE(gpu().supports(DType::f64));
  EXPECT_NE(cuda_stream(gpu()), nullptr);
  EXPECT_EQ(cuda_stream(cpu()), nullptr);
  // Round trip through device memory.
  std::vector<int32_t> in(1000), out(1000, -1);
  for (int i = 0; i < 1000; ++i) in[static_cast<size_t>(i)] = i * 7 - 3;
  DeviceBuffer buf(gpu(), 4000);
  gpu().copy_from_host(buf.data(), in.data(), 4000);
  gpu().copy_to_host(out.data(), buf.data(), 4000);
  EXPECT_EQ(in, out);
  gpu().synchronize();
}

// ---------------------------------------------------------------- linear

class CudaLinear : public CudaOps {};
MICS_DTYPE_SUITE(CudaLinear);

void check_linear_forward(DType t, int64_t m, int64_t k, int64_t n, bool with_bias, uint64_t seed,
                          int64_t misalign = 0) {
  SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " K=" << k << " N=" << n
                                  << " bias=" << with_bias << " misalign=" << misalign);
  std::mt19937_64 rng(seed);
  const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
  const Vec b = with_bias ? rounded(t, random_vec(rng, n)) : Vec{};
  H64 r_out(Shape{m, n}), r_in(in, {m, k}), r_w(w, {n, k}), r_b(b, {with_bias ? n : 0});
  cpu().linear_forward(r_out.t(), r_in.t(), r_w.t(), with_bias ? r_b.t() : Tensor{});

  // misalign: views starting `misalign` elements into their buffers (unaligned pointers).
  Vec pad_in(static_cast<size_t>(misalign), 0.0), pad_w = pad_in, pad_b = pad_in;
  pad_in.insert(pad_in.end(), in.begin(), in.end());
  pad_w.insert(pad_w.end(), w.begin(), w.end());
  pad_b.insert(pad_b.end(), b.begin(), b.end());
  Dev d_out(t, Shape{m * n + misalign}), d_in(t, {ssize(pad_in)}, pad_in), d_w(t, {ssize(pad_w)}, pad_w),
      d_b(t, {std::max<int64_t>(ssize(pad_b), 1)}, pad_b.empty() ? Vec{0.0} : pad_b);
  Tensor out = d_out.t().slice(misalign, {m, n});
  gpu().linear_forward(out, d_in.t().slice(misalign, {m, k}), d_w.t().slice(misalign, {n, k}),
                       with_bias ? d_b.t().slice(misalign, {n}) : Tensor{});
  const Vec got = d_out.get();
  // K products of size <= 1 into sums of size ~sqrt(K), in fp32 (as tests/numerics). With
  // a bias, cuBLASLt's bf16/fp16 kernels may round the product to the dtype before adding
  // it (seen on H200: ~u |product| on outputs that cancel): one rounding of size sqrt(K).
  const double sk = std::sqrt(static_cast<double>(k));
  expect_close(Vec(got.begin() + misalign, got.end()), r_out.vec(),
               tol(t, 4 * sk, sk + 1, with_bias ? 1 : 0), "out");
}

TEST_P(CudaLinear, ForwardMatchesReference) {
  MICS_REQUIRE_CUDA();
  for (bool bias : {false, true}) {
    check_linear_forward(GetParam(), 37, 53, 67, bias, 11);
    check_linear_forward(GetParam(), 7, 13, 5, bias, 12);
    check_linear_forward(GetParam(), 64, 128, 96, bias, 13);
    check_linear_forward(GetParam(), 1, 131, 3, bias, 14);
  }
}

TEST_P(CudaLinear, ForwardUnalignedViews) {
  MICS_REQUIRE_CUDA();
  for (bool bias : {false, true}) {
    check_linear_forward(GetParam(), 64, 128, 96, bias, 15, 1);
    check_linear_forward(GetParam(), 37, 53, 67, bias, 16, 3);
  }
}

TEST_P(CudaLinear, BackwardMatchesReferenceAndAccumulates) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  enum class DIn { overwrite, accumulate, skipped };
  // N = 67, 3: rows too narrow for cuBLASLt's fast kernels, staged padded; M = 300: the bias
  // gradient's column sums in 3 chunks of rows.
  const int64_t epilogues_before = cuda_bias_grad_epilogue_calls(gpu());
  for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {37, 53, 67}, {64, 128, 96}, {5, 7, 3}, {300, 24, 67}})
    for (bool with_bias : {false, true})
      for (DIn mode : {DIn::overwrite, DIn::accumulate, DIn::skipped}) {
        SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " K=" << k << " N=" << n
                                        << " bias=" << with_bias << " d_in mode=" << int(mode));
        std::mt19937_64 rng(21);
        const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
        const Vec g = rounded(t, random_vec(rng, m * n));
        const Vec d_in0 = rounded(t, random_vec(rng, m * k)), d_w0 = rounded(t, random_vec(rng, n * k)),
                  d_b0 = rounded(t, random_vec(rng, n));
        const Accumulate acc = mode == DIn::accumulate ? Accumulate::yes : Accumulate::no;
        H64 r_din(d_in0, {m, k}), r_dw(d_w0, {n, k}), r_db(d_b0, {n}), r_g(g, {m, n}),
            r_in(in, {m, k}), r_w(w, {n, k});
        cpu().linear_backward(mode == DIn::skipped ? Tensor{} : r_din.t(), r_dw.t(),
                              with_bias ? r_db.t() : Tensor{}, r_g.t(), r_in.t(), r_w.t(), acc);
        Dev din(t, {m, k}, d_in0), dw(t, {n, k}, d_w0), db(t, {n}, d_b0), dg(t, {m, n}, g),
            din_(t, {m, k}, in), dwt(t, {n, k}, w);
        gpu().linear_backward(mode == DIn::skipped ? Tensor{} : din.t(), dw.t(),
                              with_bias ? db.t() : Tensor{}, dg.t(), din_.t(), dwt.t(), acc);
        // d_in: N-term dots; d_weight, d_bias: M-term sums; each onto a prefill of size 1.
        // Accumulating GEMMs (beta = 1) in bf16/fp16 may round the product to the dtype
        // before adding C (as the bias above): one rounding of the product's size.
        const double sn = std::sqrt(double(n)), sm = std::sqrt(double(m));
        if (mode == DIn::skipped)
          expect_identical(din.get(), d_in0, "d_in untouched");
        else
          expect_close(din.get(), r_din.vec(),
                       tol(t, 4 * sn, sn + 1, mode == DIn::accumulate ? 1 : 0), "d_in");
        expect_close(dw.get(), r_dw.vec(), tol(t, 4 * sm, sm + 1, 1), "d_weight (+=)");
        // d_bias in half precision from cuBLASLt's BGRADB epilogue: the column sums rounded
        // to the dtype (as cuBLASLt documents the bias gradient's type), then added: one
        // rounding of the sum's size before the result's own.
        if (with_bias)
          expect_close(db.get(), r_db.vec(), tol(t, 4 * sm, sm + 1, 1), "d_bias (+=)");
        else
          expect_identical(db.get(), d_b0, "d_bias untouched");
      }
  // Which path the bias gradients took is the library's choice (cuBLASLt's BGRADB epilogue
  // in half precision where it has an algorithm, else column sums): said, not asserted.
  std::printf("  %s: %lld of 3 bias gradients of M=64 K=128 N=96 (half precision only) from cuBLASLt's BGRADB epilogue\n",
              dname(t), static_cast<long long>(cuda_bias_grad_epilogue_calls(gpu()) - epilogues_before));
}

// GPT-2's LM head at its real width (50265 tokens, padded to 50272 for cuBLASLt) in bf16,
// no bias: the padded forward, and the backward that writes the weight gradient through
// the padded weight's scratch, at the sizes the benchmark runs them (the shapes above are
// small); the weight gradient both written over (the first micro-step) and accumulated.
TEST(CudaLinearAtScale, Gpt2LmHeadWidthMatchesReference) {
  MICS_REQUIRE_CUDA();
  const DType t = DType::bf16;
  const int64_t m = 512, k = 768, n = 50265;
  std::mt19937_64 rng(41);
  const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
  const Vec g = rounded(t, random_vec(rng, m * n)), d_w0 = rounded(t, random_vec(rng, n * k));
  H64 r_out(Shape{m, n}), r_in(in, {m, k}), r_w(w, {n, k}), r_g(g, {m, n});
  cpu().linear_forward(r_out.t(), r_in.t(), r_w.t(), Tensor{});
  Dev d_out(t, Shape{m, n}), d_in(t, {m, k}, in), d_w(t, {n, k}, w), d_g(t, {m, n}, g);
  gpu().linear_forward(d_out.t(), d_in.t(), d_w.t(), Tensor{});
  const double sk = std::sqrt(double(k)), sn = std::sqrt(double(n)), sm = std::sqrt(double(m));
  expect_close(d_out.get(), r_out.vec(), tol(t, 4 * sk, sk + 1), "out");
  for (Accumulate acc : {Accumulate::no, Accumulate::yes}) {
    SCOPED_TRACE(acc == Accumulate::yes ? "d_weight +=" : "d_weight =");
    H64 r_din(Shape{m, k}), r_dw(d_w0, {n, k});
    cpu().linear_backward(r_din.t(), r_dw.t(), Tensor{}, r_g.t(), r_in.t(), r_w.t(), Accumulate::no, acc);
    Dev din(t, Shape{m, k}), dw(t, {n, k}, d_w0);
    gpu().linear_backward(din.t(), dw.t(), Tensor{}, d_g.t(), d_in.t(), d_w.t(), Accumulate::no, acc);
    // As CudaLinear's backward: N-term dots for d_in, M-term sums for d_weight, which is
    // rounded to bf16 in the padded scratch and then, accumulating, added (one more rounding).
    expect_close(din.get(), r_din.vec(), tol(t, 4 * sn, sn + 1), "d_in");
    expect_close(dw.get(), r_dw.vec(), tol(t, 4 * sm, sm + 1, acc == Accumulate::yes ? 1 : 0), "d_weight");
  }
}

// acc_params no: parameter gradients written over stale contents (NaN here), against the
// CPU's float64 sums into zeroed buffers: the padded output width (N = 67), cuBLASLt's
// BGRADB epilogue in half precision (N = 96), no rows (zeros written); linear_backward,
// linear_gelu_backward (tanh: cuBLASLt's DGELU epilogue where it applies) and
// layernorm_backward (its column reductions' fold writes instead of adding).
TEST_P(CudaLinear, ParameterGradientsWrittenOverWithAccParamsNo) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const double nan = std::nan("");
  for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{37, 53, 67}, {64, 128, 96}, {0, 24, 16}})
    for (int op = 0; op < 3; ++op) {
      SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " K=" << k << " N=" << n << " "
                                      << (op == 0 ? "linear_backward" : op == 1 ? "linear_gelu_backward"
                                                                                 : "layernorm_backward"));
      std::mt19937_64 rng(25);
      const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
      const Vec g = rounded(t, random_vec(rng, m * n)), pre = rounded(t, random_vec(rng, m * k, -3, 3));
      const Vec gamma = rounded(t, random_vec(rng, k, 0.5, 1.5)), beta = rounded(t, random_vec(rng, k));
      const bool ln = op == 2;
      const Shape ws = ln ? Shape{k} : Shape{n, k}, bs = ln ? Shape{k} : Shape{n};
      H64 r_w(ws), r_b(bs), r_dx(Shape{m, k}), r_g(g, {m, n}), r_in(in, {m, k}), r_wt(w, {n, k}), r_pre(pre, {m, k}),
          r_gam(gamma, {k}), r_be(beta, {k}), r_y(Shape{m, k}), r_mean(Shape{m}), r_rstd(Shape{m}), r_dy(in, {m, k});
      Dev d_w(t, ws, Vec(static_cast<size_t>(ws.numel()), nan)), d_b(t, bs, Vec(static_cast<size_t>(bs.numel()), nan)),
          d_dx(t, Shape{m, k}), d_g(t, {m, n}, g), d_in(t, {m, k}, in), d_wt(t, {n, k}, w), d_pre(t, {m, k}, pre),
          d_gam(t, {k}, gamma), d_be(t, {k}, beta), d_y(t, Shape{m, k}), d_mean(DType::f32, Shape{m}),
          d_rstd(DType::f32, Shape{m}), d_dy(t, {m, k}, in);
      if (op == 0) {
        // (The reference too written over: its buffers start as NaN like the device's.)
        cpu().linear_backward(r_dx.t(), r_w.t(), r_b.t(), r_g.t(), r_in.t(), r_wt.t(), Accumulate::no, Accumulate::no);
        gpu().linear_backward(d_dx.t(), d_w.t(), d_b.t(), d_g.t(), d_in.t(), d_wt.t(), Accumulate::no, Accumulate::no);
      } else if (op == 1) {
        cpu().linear_gelu_backward(r_dx.t(), r_w.t(), r_b.t(), r_g.t(), r_in.t(), r_pre.t(), r_wt.t(), GeluKind::tanh,
                                   Accumulate::no);
        gpu().linear_gelu_backward(d_dx.t(), d_w.t(), d_b.t(), d_g.t(), d_in.t(), d_pre.t(), d_wt.t(), GeluKind::tanh,
                                   Accumulate::no);
      } else {
        gpu().layernorm_forward(d_y.t(), d_mean.t(), d_rstd.t(), d_pre.t(), d_gam.t(), d_be.t(), 1e-5f);
        // The CPU's reference from the GPU's own statistics (rounded to fp32 already).
        H64 r_m(d_mean.get(), {m}), r_r(d_rstd.get(), {m});
        cpu().layernorm_backward(r_dx.t(), r_w.t(), r_b.t(), r_dy.t(), r_pre.t(), r_gam.t(), r_m.t(), r_r.t(),
                                 Accumulate::no, Accumulate::no);
        gpu().layernorm_backward(d_dx.t(), d_w.t(), d_b.t(), d_dy.t(), d_pre.t(), d_gam.t(), d_mean.t(), d_rstd.t(),
                                 Accumulate::no, Accumulate::no);
      }
      // M-term sums (times |xhat| <= ~3 for LayerNorm's gamma), one rounding to the dtype.
      const double sm = std::sqrt(double(std::max<int64_t>(m, 1)));
      expect_close(d_w.get(), r_w.vec(), tol(t, 4 * sm * 3, 3 * sm + 1, 1), "weight (gamma) gradient written");
      expect_close(d_b.get(), r_b.vec(), tol(t, 4 * sm, sm + 1, 1), "bias (beta) gradient written");
    }
}

// runtime.gemm_autotune: each GEMM shape's first beta-0 call times cuBLASLt's candidate
// algorithms on its own operands and keeps the fastest; every call's result is still the
// product (forward with bias, d_in written and added, d_weight written and added), within
// CudaLinear's tolerances. How many shapes changed algorithm is printed, not asserted.
TEST_P(CudaLinear, AutotunedGemmsComputeTheSameProducts) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  CudaBackendOptions options;
  options.gemm_autotune = true;
  const std::unique_ptr<Backend> tuned = make_cuda_backend(0, options);
  for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{64, 128, 96}, {256, 512, 384}, {37, 53, 67}})
    for (int call = 0; call < 2; ++call) {  // the first call of each shape is timed, the second reuses its choice
      SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " K=" << k << " N=" << n << " call " << call);
      std::mt19937_64 rng(27 + call);
      const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
      const Vec b = rounded(t, random_vec(rng, n)), g = rounded(t, random_vec(rng, m * n));
      const Vec d_in0 = rounded(t, random_vec(rng, m * k)), d_w0 = rounded(t, random_vec(rng, n * k));
      H64 r_out(Shape{m, n}), r_in(in, {m, k}), r_w(w, {n, k}), r_b(b, {n});
      cpu().linear_forward(r_out.t(), r_in.t(), r_w.t(), r_b.t());
      Dev d_out(t, Shape{m, n}), d_in(t, {m, k}, in), d_w(t, {n, k}, w), d_b(t, {n}, b);
      tuned->linear_forward(d_out.t(), d_in.t(), d_w.t(), d_b.t());
      tuned->synchronize();  // its own stream: read back below through gpu()'s
      const double sk = std::sqrt(double(k)), sn = std::sqrt(double(n)), sm = std::sqrt(double(m));
      expect_close(d_out.get(), r_out.vec(), tol(t, 4 * sk, sk + 1, 1), "out");
      for (Accumulate acc : {Accumulate::no, Accumulate::yes}) {
        H64 r_din(d_in0, {m, k}), r_dw(d_w0, {n, k}), r_g(g, {m, n});
        cpu().linear_backward(r_din.t(), r_dw.t(), Tensor{}, r_g.t(), r_in.t(), r_w.t(), acc, acc);
        Dev din(t, {m, k}, d_in0), dw(t, {n, k}, d_w0), dg(t, {m, n}, g);
        tuned->linear_backward(din.t(), dw.t(), Tensor{}, dg.t(), d_in.t(), d_w.t(), acc, acc);
        tuned->synchronize();
        expect_close(din.get(), r_din.vec(), tol(t, 4 * sn, sn + 1, 1), acc == Accumulate::yes ? "d_in (+=)" : "d_in (=)");
        expect_close(dw.get(), r_dw.vec(), tol(t, 4 * sm, sm + 1, 1), acc == Accumulate::yes ? "d_weight (+=)" : "d_weight (=)");
      }
    }
  std::printf("  %s: %lld GEMM shapes autotuned, %lld kept an algorithm other than the heuristic's first\n", dname(t),
              static_cast<long long>(cuda_gemm_autotuned_plans(*tuned)),
              static_cast<long long>(cuda_gemm_autotune_changes(*tuned)));
  EXPECT_GT(cuda_gemm_autotuned_plans(*tuned), 0) << "no GEMM was timed: the products above did not test the autotune";
}

// runtime.overlap_weight_grads: d_weight and d_bias on a second stream beside d_in's
// product, joined before the op returns. The same GEMMs (the same cuBLASLt heuristic on a
// handle of the same workspace), so the same bits as the one-stream backend: with and
// without d_in, written and added, the bias gradient from BGRADB (half precision) or the
// column sums (fp32), a width that is padded (67: one stream, as before), and through the
// GELU both ways (tanh: the DGELU epilogue; erf: separate ops).
TEST_P(CudaLinear, WeightGradientsOnTheirOwnStreamGiveTheSameBits) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  CudaBackendOptions options;
  options.weight_grad_stream = true;
  const std::unique_ptr<Backend> apart = make_cuda_backend(0, options);
  for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{256, 512, 384}, {64, 96, 128}, {37, 48, 67}}) {
    SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " K=" << k << " N=" << n);
    std::mt19937_64 rng(41);
    const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k));
    const Vec g = rounded(t, random_vec(rng, m * n)), pre = rounded(t, random_vec(rng, m * k, -3, 3));
    const Vec d_in0 = rounded(t, random_vec(rng, m * k)), d_w0 = rounded(t, random_vec(rng, n * k)),
              d_b0 = rounded(t, random_vec(rng, n));
    auto run = [&](Backend& be, bool with_d_in, Accumulate acc, int gelu) {  // gelu: 0 none, 1 tanh, 2 erf
      Dev din(t, {m, k}, d_in0), dw(t, {n, k}, d_w0), db(t, {n}, d_b0), dg(t, {m, n}, g), x(t, {m, k}, in),
          wt(t, {n, k}, w), p(t, {m, k}, pre);
      if (gelu == 0)
        be.linear_backward(with_d_in ? din.t() : Tensor{}, dw.t(), db.t(), dg.t(), x.t(), wt.t(), acc, acc);
      else
        be.linear_gelu_backward(din.t(), dw.t(), db.t(), dg.t(), x.t(), p.t(), wt.t(),
                                gelu == 1 ? GeluKind::tanh : GeluKind::erf, acc);
      be.synchronize();  // its own streams; read back through gpu()'s
      Vec out = din.get();
      const Vec dwv = dw.get(), dbv = db.get();
      out.insert(out.end(), dwv.begin(), dwv.end());
      out.insert(out.end(), dbv.begin(), dbv.end());
      return out;
    };
    for (int gelu : {0, 1, 2})
      for (Accumulate acc : {Accumulate::no, Accumulate::yes})
        for (bool with_d_in : {true, false}) {
          if (gelu != 0 && !with_d_in) continue;
          SCOPED_TRACE(testing::Message() << "gelu " << gelu << (acc == Accumulate::yes ? " +=" : " =")
                                          << (with_d_in ? "" : " no d_in"));
          expect_identical(run(*apart, with_d_in, acc, gelu), run(gpu(), with_d_in, acc, gelu),
                           "d_in, d_weight, d_bias");
        }
  }
  // 2 unpadded shapes x (2 linear backwards with d_in + 4 through the GELU) took the second
  // stream; the padded width and those without d_in did not.
  EXPECT_EQ(cuda_weight_grad_forks(*apart), 12) << "the weight gradients did not run on their own stream as often";
  EXPECT_EQ(cuda_weight_grad_forks(gpu()), 0);
  if (t != DType::f32) {
    EXPECT_GT(cuda_bias_grad_epilogue_calls(*apart), 0) << "BGRADB never ran on either stream";
  }
}

// ---------------------------------------------------------------- linear + GELU

// The FFN's first layer with its GELU, and the backward through the second layer and the
// GELU. Widths that are multiples of 8 in half precision with the tanh form run as
// cuBLASLt epilogues (GELU_AUX_BIAS, DGELU); the other cases as separate ops. Both are
// held to the float64 reference.
TEST_P(CudaLinear, GeluFusedForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  for (GeluKind kind : {GeluKind::tanh, GeluKind::erf})
    for (auto [m, k, n] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{64, 96, 128}, {37, 53, 67}, {300, 64, 40}}) {
      SCOPED_TRACE(testing::Message() << dname(t) << (kind == GeluKind::tanh ? " tanh" : " erf") << " M=" << m
                                      << " K=" << k << " N=" << n);
      std::mt19937_64 rng(17);
      // Forward: pre[m,n] = in[m,k] @ w[n,k]^T + b, act = gelu(pre).
      const Vec in = rounded(t, random_vec(rng, m * k)), w = rounded(t, random_vec(rng, n * k)),
                b = rounded(t, random_vec(rng, n));
      H64 r_pre(Shape{m, n}), r_in(in, {m, k}), r_w(w, {n, k}), r_b(b, {n});
      cpu().linear_forward(r_pre.t(), r_in.t(), r_w.t(), r_b.t());
      Dev d_act(t, Shape{m, n}), d_pre(t, Shape{m, n}), d_in(t, {m, k}, in), d_w(t, {n, k}, w), d_b(t, {n}, b);
      gpu().linear_gelu_forward(d_act.t(), d_pre.t(), d_in.t(), d_w.t(), d_b.t(), kind);
      const double sk = std::sqrt(static_cast<double>(k));
      const Vec pre = d_pre.get();
      expect_close(pre, r_pre.vec(), tol(t, 4 * sk, sk + 1, 1), "pre");
      // act against gelu of the stored pre in float64: the GELU is taken of the fp32 sum
      // before pre is rounded (|gelu'| < 1.13), and cuBLASLt evaluates the tanh its own way.
      H64 r_act(Shape{m, n}), r_pre_got(pre, {m, n});
      cpu().gelu_forward(r_act.t(), r_pre_got.t(), kind);
      expect_close(d_act.get(), r_act.vec(), Tol{kTol(t).rtol, 3 * kTol(t).u * max_abs(pre) + 8 * kU32}, "act");

      // Backward through a second layer y[m,n2] = act @ w2[n2,n]^T: d_pre = (d_y @ w2) * gelu'(pre),
      // d_w2 += d_y^T act, d_b2 += column sums of d_y.
      const int64_t n2 = k;
      const Vec pre_in = rounded(t, random_vec(rng, m * n, -3, 3));
      H64 r_act_in(Shape{m, n}), r_prein(pre_in, {m, n});
      cpu().gelu_forward(r_act_in.t(), r_prein.t(), kind);
      const Vec act_in = rounded(t, r_act_in.vec());
      const Vec w2 = rounded(t, random_vec(rng, n2 * n)), dy = rounded(t, random_vec(rng, m * n2));
      const Vec dw0 = rounded(t, random_vec(rng, n2 * n)), db0 = rounded(t, random_vec(rng, n2));
      H64 r_dpre(Shape{m, n}), r_dw(dw0, {n2, n}), r_db(db0, {n2}), r_dy(dy, {m, n2}), r_act2(act_in, {m, n}),
          r_w2(w2, {n2, n});
      cpu().linear_gelu_backward(r_dpre.t(), r_dw.t(), r_db.t(), r_dy.t(), r_act2.t(), r_prein.t(), r_w2.t(), kind);
      Dev g_dpre(t, Shape{m, n}), g_dw(t, {n2, n}, dw0), g_db(t, {n2}, db0), g_dy(t, {m, n2}, dy),
          g_act(t, {m, n}, act_in), g_pre(t, {m, n}, pre_in), g_w2(t, {n2, n}, w2);
      gpu().linear_gelu_backward(g_dpre.t(), g_dw.t(), g_db.t(), g_dy.t(), g_act.t(), g_pre.t(), g_w2.t(), kind);
      // d_y @ w2: n2 products in fp32 (sqrt(n2) growth), times |gelu'| <= 1.13 on [-3, 3];
      // one rounding of the product (separate ops) and one of d_pre. In half precision the
      // tanh form runs as cuBLASLt's DGELU epilogue, whose tanh may be the hardware's
      // tanh.approx.f32 (relative error up to 2^-10.987, PTX ISA): gelu' moves by up to ~4.8
      // times that on [-3, 3], so 5 * 2^-11 of the product's size more (simulated on this
      // test's inputs: fp16 would exceed the two roundings 2.4-fold).
      const double sn = std::sqrt(static_cast<double>(n2)), sm = std::sqrt(static_cast<double>(m));
      const double fast_tanh = kind == GeluKind::tanh && t != DType::f32 ? 5 * 0x1p-11 / kTol(t).u : 0.0;
      expect_close(g_dpre.get(), r_dpre.vec(), tol(t, 4 * sn * 1.13, (sn + 1) * 1.13, 2 + fast_tanh), "d_pre");
      expect_close(g_dw.get(), r_dw.vec(), tol(t, 4 * sm, sm + 1, 1), "d_weight (+=)");
      // d_bias as in CudaLinear's backward: in half precision BGRADB rounds the column sums
      // to the dtype before they are added (one rounding beyond the result's own).
      expect_close(g_db.get(), r_db.vec(), tol(t, 4 * sm, sm + 1, 1), "d_bias (+=)");
    }
}

// ---------------------------------------------------------------- gelu

class CudaGelu : public CudaOps {};
MICS_DTYPE_SUITE(CudaGelu);

TEST_P(CudaGelu, ForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  for (GeluKind kind : {GeluKind::erf, GeluKind::tanh}) {
    SCOPED_TRACE(kind == GeluKind::erf ? "erf" : "tanh");
    std::mt19937_64 rng(31);
    Vec in = random_vec(rng, 37 * 53, -6, 6);
    for (double x : {0.0, 1e-4, -1e-4, 10.0, -10.0, 12.0, -12.0}) in.push_back(x);
    in = rounded(t, in);
    const Shape s{ssize(in)};
    H64 r_out(s), r_in(in, s);
    cpu().gelu_forward(r_out.t(), r_in.t(), kind);
    Dev d_out(t, s), d_in(t, s, in);
    gpu().gelu_forward(d_out.t(), d_in.t(), kind);
    // As tests/numerics: a few fp32 roundings, absolute a few u |x| for x < 0.
    expect_close(d_out.get(), r_out.vec(), tol(t, 4, max_abs(in)), "gelu forward");

    const Vec w = rounded(t, random_vec(rng, in.size()));
    H64 r_din(s), r_w(w, s);
    cpu().gelu_backward(r_din.t(), r_w.t(), r_in.t(), kind);
    Dev g_in(t, s), g_out(t, s, w);
    gpu().gelu_backward(g_in.t(), g_out.t(), d_in.t(), kind);
    // 1 - s is absolute-accurate to u, amplified by 2|x| u'(x) (~56 at |x| = 6, ~210 at 12).
    const double xm = max_abs(in);
    const double amp = 1 + 2 * xm * std::sqrt(2 / std::numbers::pi) * (1 + 3 * 0.044715 * xm * xm);
    expect_close(g_in.get(), r_din.vec(), tol(t, 4, amp), "gelu backward");
    // d_in aliasing d_out gives the same values.
    gpu().gelu_backward(g_out.t(), g_out.t(), d_in.t(), kind);
    expect_identical(g_out.get(), g_in.get(), "gelu backward in place");
  }
}

// ---------------------------------------------------------------- layernorm

class CudaLayerNorm : public ::testing::TestWithParam<std::tuple<DType, DType>> {};
INSTANTIATE_TEST_SUITE_P(
    Cuda, CudaLayerNorm,
    ::testing::Values(std::tuple{DType::f32, DType::f32}, std::tuple{DType::bf16, DType::bf16},
                      std::tuple{DType::f16, DType::f16}, std::tuple{DType::bf16, DType::f32},
                      std::tuple{DType::f16, DType::f32}),
    [](const auto& info) {
      return std::string(dtype_name(std::get<0>(info.param))) + "_stats_" +
             dtype_name(std::get<1>(info.param));
    });

constexpr float kLnEps = 1e-5f;

TEST_P(CudaLayerNorm, ForwardMatchesReference) {
  MICS_REQUIRE_CUDA();
  const auto [t, st] = GetParam();
  // Odd widths read element by element; multiples of 8 take 16-byte accesses (BERT's 2560).
  for (auto [m, c] : std::vector<std::pair<int64_t, int64_t>>{
           {37, 53}, {67, 131}, {3, 4099}, {5, 1}, {9, 8}, {33, 40}, {16, 2560}, {2, 5120}}) {
    SCOPED_TRACE(testing::Message() << dname(t) << " stats " << dname(st) << " M=" << m << " C=" << c);
    std::mt19937_64 rng(41);
    const Vec in = rounded(t, random_vec(rng, m * c, 1.0, 3.0));  // mean ~2
    const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
    H64 r_out(Shape{m, c}), r_mean(Shape{m}), r_rstd(Shape{m}), r_in(in, {m, c}), r_g(gamma, {c}),
        r_b(beta, {c});
    cpu().layernorm_forward(r_out.t(), r_mean.t(), r_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
    Dev d_out(t, Shape{m, c}), d_mean(st, Shape{m}), d_rstd(st, Shape{m}), d_in(t, {m, c}, in),
        d_g(t, {c}, gamma), d_b(t, {c}, beta);
    gpu().layernorm_forward(d_out.t(), d_mean.t(), d_rstd.t(), d_in.t(), d_g.t(), d_b.t(), kLnEps);
    // fp32 statistics: C-term sums (sqrt(C) growth) of values ~2; out = xhat gamma + beta.
    // (C = 1: var = 0, rstd = 1/sqrt(eps) ~ 316: relative accuracy still holds.)
    const double sc = std::sqrt(double(c));
    const double rs = max_abs(r_rstd.vec());
    expect_close(d_out.get(), r_out.vec(), tol(t, 4 * sc, 2 * 1.5 + 1), "out");
    expect_close(d_mean.get(), r_mean.vec(), tol(st, 4 * sc, 2), "mean");
    expect_close(d_rstd.get(), r_rstd.vec(), tol(st, 4 * sc, rs), "rstd");
  }
}

TEST_P(CudaLayerNorm, BackwardMatchesReferenceAndAccumulates) {
  MICS_REQUIRE_CUDA();
  const auto [t, st] = GetParam();
  // M = 300: the parameter gradients' column sums run in 3 chunks of rows (column_reduce.cuh).
  for (auto [m, c] : std::vector<std::pair<int64_t, int64_t>>{{37, 53}, {3, 4099}, {67, 131}, {300, 40}, {16, 2560}})
    for (Accumulate acc : {Accumulate::no, Accumulate::yes}) {
      SCOPED_TRACE(testing::Message() << dname(t) << " stats " << dname(st) << " M=" << m
                                      << " C=" << c << (acc == Accumulate::yes ? " d_in +=" : " d_in ="));
      std::mt19937_64 rng(43);
      const Vec in = rounded(t, random_vec(rng, m * c, 1.0, 3.0));
      const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
      const Vec w = rounded(t, random_vec(rng, m * c));
      const Vec d_in0 = rounded(t, random_vec(rng, m * c)), d_g0 = rounded(t, random_vec(rng, c)),
                d_b0 = rounded(t, random_vec(rng, c));
      // The saved statistics as the forward leaves them in the stats dtype: one input for both.
      H64 f_out(Shape{m, c}), f_mean(Shape{m}), f_rstd(Shape{m}), r_in(in, {m, c}), r_g(gamma, {c}),
          r_b(beta, {c});
      cpu().layernorm_forward(f_out.t(), f_mean.t(), f_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
      const Vec mean = rounded(st, f_mean.vec()), rstd = rounded(st, f_rstd.vec());

      H64 r_din(d_in0, {m, c}), r_dg(d_g0, {c}), r_db(d_b0, {c}), r_w(w, {m, c}), r_mean(mean, {m}),
          r_rstd(rstd, {m});
      cpu().layernorm_backward(r_din.t(), r_dg.t(), r_db.t(), r_w.t(), r_in.t(), r_g.t(), r_mean.t(),
                               r_rstd.t(), acc);
      Dev din(t, {m, c}, d_in0), dg(t, {c}, d_g0), db(t, {c}, d_b0), dw(t, {m, c}, w),
          dx(t, {m, c}, in), dgam(t, {c}, gamma), dmean(st, {m}, mean), drstd(st, {m}, rstd);
      gpu().layernorm_backward(din.t(), dg.t(), db.t(), dw.t(), dx.t(), dgam.t(), dmean.t(),
                               drstd.t(), acc);
      // As tests/numerics: C-term means of |g| <= 1.5 times rstd; M-term sums for the
      // parameter gradients, onto prefills of size 1.
      const double sc = std::sqrt(double(c)), sm = std::sqrt(double(m)), rs = max_abs(rstd);
      expect_close(din.get(), r_din.vec(), tol(t, 8 * sc, 1.5 * rs * 4 + 1), "d_in");
      expect_close(dg.get(), r_dg.vec(), tol(t, 8 * sm, 2 * sm + 1), "d_gamma (+=)");
      expect_close(db.get(), r_db.vec(), tol(t, 4 * sm, sm + 1), "d_beta (+=)");
    }
}

// Rows live in registers, at most 512 threads of 32 elements: wider rows are refused.
TEST(CudaLayerNormErrors, RowsWiderThan16384AreRefused) {
  MICS_REQUIRE_CUDA();
  const int64_t m = 2, c = 16392;
  Dev out(DType::bf16, Shape{m, c}), in(DType::bf16, Shape{m, c}), g(DType::bf16, Shape{c}), b(DType::bf16, Shape{c}),
      mean(DType::f32, Shape{m}), rstd(DType::f32, Shape{m});
  EXPECT_THROW(gpu().layernorm_forward(out.t(), mean.t(), rstd.t(), in.t(), g.t(), b.t(), kLnEps), ShapeError);
  Dev ok_out(DType::bf16, Shape{m, 16384}), ok_in(DType::bf16, Shape{m, 16384}, Vec(2 * 16384, 1.0)),
      ok_g(DType::bf16, Shape{16384}, Vec(16384, 1.0)), ok_b(DType::bf16, Shape{16384}, Vec(16384, 0.0));
  gpu().layernorm_forward(ok_out.t(), mean.t(), rstd.t(), ok_in.t(), ok_g.t(), ok_b.t(), kLnEps);
  expect_identical(ok_out.get(), Vec(2 * 16384, 0.0), "a constant row of the widest width normalises to 0");
}

// The residual add and the LayerNorm after it in one pass: sum = a + b rounded to the
// dtype (as `add`), out / mean / rstd = layernorm_forward(sum).
TEST_P(CudaLayerNorm, AddLayerNormMatchesAddThenLayerNorm) {
  MICS_REQUIRE_CUDA();
  const auto [t, st] = GetParam();
  for (auto [m, c] : std::vector<std::pair<int64_t, int64_t>>{{37, 53}, {16, 2560}, {3, 4099}}) {
    SCOPED_TRACE(testing::Message() << dname(t) << " stats " << dname(st) << " M=" << m << " C=" << c);
    std::mt19937_64 rng(45);
    const Vec a = rounded(t, random_vec(rng, m * c, 1.0, 3.0)), b = rounded(t, random_vec(rng, m * c, -0.5, 0.5));
    const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
    Vec exact(a.size());
    for (size_t i = 0; i < a.size(); ++i) exact[i] = a[i] + b[i];
    Dev d_sum(t, Shape{m, c}), d_out(t, Shape{m, c}), d_mean(st, Shape{m}), d_rstd(st, Shape{m}), d_a(t, {m, c}, a),
        d_b(t, {m, c}, b), d_g(t, {c}, gamma), d_be(t, {c}, beta);
    gpu().add_layernorm_forward(d_sum.t(), d_out.t(), d_mean.t(), d_rstd.t(), d_a.t(), d_b.t(), d_g.t(), d_be.t(),
                                kLnEps);
    // The fp32 sum of two dtype values, rounded once more to the dtype (as the add test).
    const Vec sum = d_sum.get();
    expect_close(sum, exact, Tol{kTol(t).u + kU32, t == DType::f16 ? 0x1p-25 : 0.0}, "sum");
    // The LayerNorm of the sum as stored, against float64.
    H64 r_out(Shape{m, c}), r_mean(Shape{m}), r_rstd(Shape{m}), r_in(sum, {m, c}), r_g(gamma, {c}), r_b(beta, {c});
    cpu().layernorm_forward(r_out.t(), r_mean.t(), r_rstd.t(), r_in.t(), r_g.t(), r_b.t(), kLnEps);
    const double sc = std::sqrt(double(c)), rs = max_abs(r_rstd.vec());
    expect_close(d_out.get(), r_out.vec(), tol(t, 4 * sc, 2 * 1.5 + 1), "out");
    expect_close(d_mean.get(), r_mean.vec(), tol(st, 4 * sc, 3), "mean");
    expect_close(d_rstd.get(), r_rstd.vec(), tol(st, 4 * sc, rs), "rstd");
    // The same kernel's LayerNorm alone on that sum gives the same bits; sum may alias a.
    Dev l_out(t, Shape{m, c}), l_mean(st, Shape{m}), l_rstd(st, Shape{m});
    gpu().layernorm_forward(l_out.t(), l_mean.t(), l_rstd.t(), d_sum.t(), d_g.t(), d_be.t(), kLnEps);
    expect_identical(l_out.get(), d_out.get(), "out vs layernorm_forward(sum)");
    gpu().add_layernorm_forward(d_a.t(), l_out.t(), l_mean.t(), l_rstd.t(), d_a.t(), d_b.t(), d_g.t(), d_be.t(),
                                kLnEps);
    expect_identical(d_a.get(), sum, "sum written over a");
    expect_identical(l_out.get(), d_out.get(), "out with sum aliasing a");
  }
}

// Rows whose width is a multiple of 8 take 16-byte accesses when every pointer is 16-byte
// aligned and single elements otherwise; both must give the same bits.
TEST_P(CudaLayerNorm, AlignedAndUnalignedRowsGiveTheSameBits) {
  MICS_REQUIRE_CUDA();
  const auto [t, st] = GetParam();
  const int64_t m = 7, c = 2560;
  std::mt19937_64 rng(47);
  const Vec a = rounded(t, random_vec(rng, m * c, 1.0, 3.0)), b = rounded(t, random_vec(rng, m * c));
  const Vec gamma = rounded(t, random_vec(rng, c, 0.5, 1.5)), beta = rounded(t, random_vec(rng, c));
  const Vec dy = rounded(t, random_vec(rng, m * c)), d_in0 = rounded(t, random_vec(rng, m * c));
  std::vector<std::vector<Vec>> results;
  for (int64_t offset : {0, 1}) {
    auto padded = [&](const Vec& v) {
      Vec p(static_cast<size_t>(offset), 0.0);
      p.insert(p.end(), v.begin(), v.end());
      return p;
    };
    auto rows = [&](Dev& d) { return d.t().slice(offset, {m * c}).reshaped({m, c}); };
    auto vec = [&](Dev& d) { return d.t().slice(offset, {c}); };
    auto unpad = [&](const Dev& d) {
      const Vec v = d.get();
      return Vec(v.begin() + offset, v.end());
    };
    Dev d_a(t, {m * c + offset}, padded(a)), d_b(t, {m * c + offset}, padded(b)), d_g(t, {c + offset}, padded(gamma)),
        d_be(t, {c + offset}, padded(beta)), d_sum(t, Shape{m * c + offset}), d_out(t, Shape{m * c + offset});
    Dev d_mean(st, Shape{m}), d_rstd(st, Shape{m});
    gpu().add_layernorm_forward(rows(d_sum), rows(d_out), d_mean.t(), d_rstd.t(), rows(d_a), rows(d_b), vec(d_g),
                                vec(d_be), kLnEps);
    Dev d_dy(t, {m * c + offset}, padded(dy)), d_din(t, {m * c + offset}, padded(d_in0)), d_dg(t, {c + offset}),
        d_db(t, {c + offset});
    gpu().fill_zero(d_dg.t());
    gpu().fill_zero(d_db.t());
    gpu().layernorm_backward(rows(d_din), vec(d_dg), vec(d_db), rows(d_dy), rows(d_sum), vec(d_g), d_mean.t(),
                             d_rstd.t(), Accumulate::yes);
    results.push_back({unpad(d_sum), unpad(d_out), d_mean.get(), d_rstd.get(), unpad(d_din), unpad(d_dg), unpad(d_db)});
  }
  const char* names[] = {"sum", "out", "mean", "rstd", "d_in (+=)", "d_gamma", "d_beta"};
  for (size_t i = 0; i < results[0].size(); ++i)
    expect_identical(results[1][i], results[0][i], std::string(names[i]) + ": unaligned vs aligned");
}

// ---------------------------------------------------------------- attention

struct AttnCase {
  const char* name;
  int64_t batch, seq, heads, head_dim;
  bool causal, padding;
  float drop_prob;
};

class CudaAttention : public ::testing::TestWithParam<std::tuple<AttnCase, DType>> {};

TEST_P(CudaAttention, ForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  const auto [c, t] = GetParam();
  const int64_t B = c.batch, S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  const AttentionDims dims{B, S, H, D, c.causal};
  const DropoutSpec drop{c.drop_prob, 0xD1CEull};
  std::mt19937_64 rng(51);
  const Vec qkv = rounded(t, random_vec(rng, B * S * 3 * C, -1.5, 1.5));
  Ints keep = c.padding ? make_key_keep(B, S) : Ints{};
  const double keep_scale = 1 / (1 - double(c.drop_prob));
  // The largest |score| (after the 1/sqrt(D) scale): the absolute error of scores stored in
  // the dtype is u |s|, which exp turns into relative error of the probabilities.
  const double smax = largest_score(qkv, B, S, H, D);

  H64 r_out(Shape{B, S, C}), r_probs(Shape{B, H, S, S}), r_qkv(qkv, {B, S, 3 * C});
  cpu().attention_forward(r_out.t(), r_probs.t(), r_qkv.t(), c.padding ? host_ints(keep) : IntTensor{},
                          dims, drop);
  std::unique_ptr<DevInts> d_keep = c.padding ? std::make_unique<DevInts>(keep) : nullptr;
  Dev d_out(t, Shape{B, S, C}), d_probs(t, Shape{B, H, S, S}), d_qkv(t, {B, S, 3 * C}, qkv);
  gpu().attention_forward(d_out.t(), d_probs.t(), d_qkv.t(), d_keep ? d_keep->t() : IntTensor{},
                          dims, drop);
  // fp32: as tests/numerics (D-term dots, exp, T-term sums). Stored intermediates: scores
  // (u |s|, twice through the max shift), the probabilities and the dropped probabilities
  // (u each): relative errors of each probability, (2 smax + 3) u in all; out sums them
  // against |v| <= 1.5, with weights summing to at most 1/(1-p).
  const double growth = 4 * (std::sqrt(double(D)) + 2.25 * std::sqrt(double(D)) + std::sqrt(double(S)));
  const double prob_rel = (2 * smax + 3) * kTol(t).u;
  expect_close(d_probs.get(), r_probs.vec(), Tol{kTol(t).rtol + prob_rel, growth * kU32}, "probs");
  expect_close(d_out.get(), r_out.vec(), tol(t, growth, 1.5 * keep_scale, 2 * smax + 3), "out");

  // Backward from the same saved probabilities (the reference's, rounded to the dtype).
  const Vec probs = rounded(t, r_probs.vec());
  const Vec w = rounded(t, random_vec(rng, B * S * C));
  H64 r_dqkv(Shape{B, S, 3 * C}), r_scratch(Shape{B, H, S, S}), r_w(w, {B, S, C}), r_p(probs, {B, H, S, S});
  cpu().attention_backward(r_dqkv.t(), r_scratch.t(), r_w.t(), r_qkv.t(), r_p.t(), dims, drop);
  Dev d_dqkv(t, Shape{B, S, 3 * C}), d_scratch(t, Shape{B, H, S, S}), d_w(t, {B, S, C}, w),
      d_p(t, {B, H, S, S}, probs);
  gpu().attention_backward(d_dqkv.t(), d_scratch.t(), d_w.t(), d_qkv.t(), d_p.t(), dims, drop);
  expect_qkv_gradient_close(d_dqkv.get(), r_dqkv.vec(), t, C, S, growth, keep_scale);
}

INSTANTIATE_TEST_SUITE_P(
    Cuda, CudaAttention,
    ::testing::Combine(
        ::testing::Values(AttnCase{"bidirectional", 2, 13, 3, 5, false, false, 0.0f},
                          AttnCase{"causal", 2, 13, 3, 5, true, false, 0.0f},
                          AttnCase{"bidirectional_padded", 2, 13, 3, 5, false, true, 0.0f},
                          AttnCase{"causal_padded", 2, 13, 3, 5, true, true, 0.0f},
                          AttnCase{"bidirectional_dropout", 2, 13, 3, 5, false, false, 0.2f},
                          AttnCase{"causal_padded_dropout", 2, 13, 3, 5, true, true, 0.2f},
                          AttnCase{"padded_dropout_half", 2, 13, 3, 5, false, true, 0.5f},
                          // more batches than heads: GEMM batches run over the batch
                          AttnCase{"batch_major_causal", 4, 11, 2, 7, true, true, 0.1f},
                          AttnCase{"larger_causal_padded", 2, 67, 2, 16, true, true, 0.0f},
                          AttnCase{"larger_dropout", 1, 67, 3, 8, false, false, 0.1f},
                          AttnCase{"aligned_64", 2, 64, 2, 64, true, false, 0.1f},
                          // softmax rows of 16 entries per lane, and past the warp kernels'
                          // 1024 (one block per row)
                          AttnCase{"seq_300_padded_dropout", 1, 300, 2, 8, true, true, 0.1f},
                          AttnCase{"seq_1030_block_rows", 1, 1030, 1, 8, true, true, 0.1f}),
        ::testing::Values(DType::f32, DType::bf16, DType::f16)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" + dtype_name(std::get<1>(info.param));
    });

// ---------------------------------------------------------------- fused attention

// The flash-style kernels (attention_fused.cu: bf16/fp16, head dim 64 or 128) against the
// CPU backend's fused attention in fp64: out, lse, and the gradient recomputed from lse.
// Rows of 13, 67, 130 and 200 queries cross the kernels' 64-row tiles part way.
class CudaFusedAttention : public ::testing::TestWithParam<std::tuple<AttnCase, DType>> {};

// Forward on `device` against the CPU's fp64 fused attention (out, lse), then the backward
// from the reference's out; `device_lse` feeds the backward the device's own lse (cuDNN's
// statistics are its own state) instead of the reference's.
void check_fused_attention_on(Backend& device, const AttnCase& c, DType t, bool device_lse) {
  const int64_t B = c.batch, S = c.seq, H = c.heads, D = c.head_dim, C = H * D;
  const AttentionDims dims{B, S, H, D, c.causal};
  const DropoutSpec drop{c.drop_prob, 0xF05Eull};
  std::mt19937_64 rng(57);
  const Vec qkv = rounded(t, random_vec(rng, B * S * 3 * C, -1.5, 1.5));
  Ints keep = c.padding ? make_key_keep(B, S) : Ints{};
  const double keep_scale = 1 / (1 - double(c.drop_prob));
  const double smax = largest_score(qkv, B, S, H, D);

  H64 r_out(Shape{B, S, C}), r_lse(Shape{B, H, S}), r_qkv(qkv, {B, S, 3 * C});
  cpu().attention_forward_fused(r_out.t(), r_lse.t(), r_qkv.t(), c.padding ? host_ints(keep) : IntTensor{}, dims,
                                drop);
  std::unique_ptr<DevInts> d_keep = c.padding ? std::make_unique<DevInts>(keep) : nullptr;
  Dev d_out(t, Shape{B, S, C}), d_lse(DType::f32, Shape{B, H, S}), d_qkv(t, {B, S, 3 * C}, qkv);
  device.attention_forward_fused(d_out.t(), d_lse.t(), d_qkv.t(), d_keep ? d_keep->t() : IntTensor{}, dims, drop);
  device.synchronize();  // `device` may have a stream of its own (gpu_cudnn()): read back through gpu()'s
  // The unnormalised probabilities enter P V rounded to the dtype (u each, relative); the
  // scores are fp32 dots, exp is the fast hardware one (~2^-21 relative). out as in
  // CudaAttention; lse: fp32 sums of exp and a log, absolute ~1e-6 (1 + smax).
  const double growth = 4 * (std::sqrt(double(D)) + 2.25 * std::sqrt(double(D)) + std::sqrt(double(S)));
  expect_close(d_out.get(), r_out.vec(), tol(t, growth, 1.5 * keep_scale, 2 * smax + 3), "out");
  const Vec got_lse = d_lse.get(), want_lse = r_lse.vec();
  Vec g_fin, w_fin;
  for (size_t i = 0; i < want_lse.size(); ++i) {
    if (std::isinf(want_lse[i])) {
      EXPECT_EQ(got_lse[i], want_lse[i]) << "lse row " << i << " (no key shown)";
      continue;
    }
    g_fin.push_back(got_lse[i]);
    w_fin.push_back(want_lse[i]);
  }
  expect_close(g_fin, w_fin, Tol{1e-6, 4e-6 * (1 + smax + std::log(double(S)))}, "lse");

  // Backward from the reference's out and lse (the forward's, rounded as the device keeps them).
  const Vec out = rounded(t, r_out.vec()), w = rounded(t, random_vec(rng, B * S * C));
  const Vec lse = rounded(DType::f32, r_lse.vec());
  H64 r_dqkv(Shape{B, S, 3 * C}), r_w(w, {B, S, C}), r_o(out, {B, S, C}), r_l(lse, {B, H, S});
  cpu().attention_backward_fused(r_dqkv.t(), r_w.t(), r_qkv.t(), r_o.t(), r_l.t(),
                                 c.padding ? host_ints(keep) : IntTensor{}, dims, drop);
  Dev d_dqkv(t, Shape{B, S, 3 * C}), d_w(t, {B, S, C}, w), d_o(t, {B, S, C}, out),
      d_l(DType::f32, {B, H, S}, device_lse ? got_lse : lse);
  device.attention_backward_fused(d_dqkv.t(), d_w.t(), d_qkv.t(), d_o.t(), d_l.t(), d_keep ? d_keep->t() : IntTensor{},
                                  dims, drop);
  device.synchronize();
  // As CudaAttention; delta = dO . O also uses the rounded O.
  expect_qkv_gradient_close(d_dqkv.get(), r_dqkv.vec(), t, C, S, growth, keep_scale);
}

TEST_P(CudaFusedAttention, ForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  const auto [c, t] = GetParam();
  check_fused_attention_on(gpu(), c, t, false);
}

INSTANTIATE_TEST_SUITE_P(
    Cuda, CudaFusedAttention,
    ::testing::Combine(
        ::testing::Values(AttnCase{"causal_64", 2, 67, 2, 64, true, false, 0.0f},
                          AttnCase{"bidirectional_padded_128", 1, 130, 2, 128, false, true, 0.0f},
                          AttnCase{"causal_padded_dropout_64", 2, 130, 2, 64, true, true, 0.1f},
                          AttnCase{"bidirectional_dropout_128", 1, 13, 3, 128, false, false, 0.2f},
                          AttnCase{"causal_200_128", 1, 200, 1, 128, true, false, 0.0f}),
        ::testing::Values(DType::bf16, DType::f16)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" + dtype_name(std::get<1>(info.param));
    });

TEST(CudaFusedAttentionErrors, UnsupportedDtypeOrHeadDimIsRefused) {
  MICS_REQUIRE_CUDA();
  const AttentionDims d64{1, 8, 1, 64, false}, d32{1, 8, 2, 32, false};
  Dev out(DType::f32, Shape{1, 8, 64}), qkv(DType::f32, Shape{1, 8, 192}), lse(DType::f32, Shape{1, 1, 8});
  EXPECT_THROW(gpu().attention_forward_fused(out.t(), lse.t(), qkv.t(), IntTensor{}, d64, DropoutSpec{}), ShapeError);
  Dev out16(DType::bf16, Shape{1, 8, 64}), qkv16(DType::bf16, Shape{1, 8, 192}), lse2(DType::f32, Shape{1, 2, 8});
  EXPECT_THROW(gpu().attention_forward_fused(out16.t(), lse2.t(), qkv16.t(), IntTensor{}, d32, DropoutSpec{}),
               ShapeError);
  // A qkv view that is not 16-byte aligned (the kernels' vector loads would fault).
  Dev wide(DType::bf16, Shape{1 + 8 * 192});
  EXPECT_THROW(gpu().attention_forward_fused(out16.t(), lse.t(), wide.t().slice(1, {1, 8, 192}), IntTensor{}, d64,
                                             DropoutSpec{}),
               ShapeError);
}

// ---------------------------------------------------------------- profiling timeline

// --profile on CUDA times ops between events on the backend's stream (engine/op_profile.h).
TEST(CudaTimeline, MarksTimeTheWorkBetweenThem) {
  EXPECT_EQ(cpu().timeline(), nullptr);  // the CPU's ops are timed by the host clock
  MICS_REQUIRE_CUDA();
  DeviceTimeline* timeline = gpu().timeline();
  ASSERT_NE(timeline, nullptr);
  Dev x(DType::f32, Shape{int64_t{1} << 26});  // 256 MiB: a fill of ~0.1 ms or more
  const int64_t a = timeline->mark();
  gpu().fill_zero(x.t());
  const int64_t b = timeline->mark(), c = timeline->mark();
  const double fill = timeline->seconds_between(a, b), nothing = timeline->seconds_between(b, c);
  EXPECT_GT(fill, 1e-5);
  EXPECT_LT(fill, 1.0);
  EXPECT_LT(nothing, fill);
  timeline->forget();
  EXPECT_EQ(timeline->mark(), 0);  // the pool is reused
  timeline->forget();
}

// ---------------------------------------------------------------- cuDNN's fused attention

// runtime.attention "cudnn": the same ops through cuDNN's SDPA, against the same fp64
// reference. No padding and no dropout (the backend refuses both; see the errors test).
Backend& gpu_cudnn() {
  static const std::unique_ptr<Backend> backend = [] {
    CudaBackendOptions options;
    options.cudnn_attention = true;
    return make_cuda_backend(0, options);
  }();
  return *backend;
}

class CudnnFusedAttention : public ::testing::TestWithParam<std::tuple<AttnCase, DType>> {};

TEST_P(CudnnFusedAttention, ForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  if (cuda_compute_capability(0) < 80) GTEST_SKIP() << "cuDNN's fused attention needs compute capability 8.0";
  const auto [c, t] = GetParam();
  check_fused_attention_on(gpu_cudnn(), c, t, true);
}

INSTANTIATE_TEST_SUITE_P(
    Cuda, CudnnFusedAttention,
    ::testing::Combine(
        ::testing::Values(AttnCase{"causal_64", 2, 67, 2, 64, true, false, 0.0f},
                          AttnCase{"bidirectional_64", 2, 256, 3, 64, false, false, 0.0f},
                          AttnCase{"bidirectional_128", 1, 130, 2, 128, false, false, 0.0f},
                          AttnCase{"causal_200_128", 1, 200, 1, 128, true, false, 0.0f},
                          AttnCase{"causal_32", 1, 40, 2, 32, true, false, 0.0f}),
        ::testing::Values(DType::bf16, DType::f16)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" + dtype_name(std::get<1>(info.param));
    });

// runtime.cudnn_deterministic false: cuDNN's nondeterministic backward (atomics), against
// the same reference with the same tolerances, for BERT's head dimension and GPT-2's.
Backend& gpu_cudnn_nondeterministic() {
  static const std::unique_ptr<Backend> backend = [] {
    CudaBackendOptions options;
    options.cudnn_attention = true;
    options.cudnn_deterministic = false;
    return make_cuda_backend(0, options);
  }();
  return *backend;
}

TEST(CudnnFusedAttention, TheNondeterministicBackwardMatchesReference) {
  MICS_REQUIRE_CUDA();
  if (cuda_compute_capability(0) < 80) GTEST_SKIP() << "cuDNN's fused attention needs compute capability 8.0";
  for (const AttnCase& c : {AttnCase{"bidirectional_64", 2, 256, 3, 64, false, false, 0.0f},
                            AttnCase{"causal_200_128", 1, 200, 1, 128, true, false, 0.0f}}) {
    SCOPED_TRACE(c.name);
    check_fused_attention_on(gpu_cudnn_nondeterministic(), c, DType::bf16, true);
  }
}

TEST(CudnnFusedAttentionErrors, PaddingDropoutAndFp32AreRefused) {
  MICS_REQUIRE_CUDA();
  const AttentionDims d{1, 8, 1, 64, false};
  Dev out(DType::bf16, Shape{1, 8, 64}), qkv(DType::bf16, Shape{1, 8, 192}), lse(DType::f32, Shape{1, 1, 8});
  DevInts keep(Ints(8, 1));
  EXPECT_THROW(gpu_cudnn().attention_forward_fused(out.t(), lse.t(), qkv.t(), keep.t(), d, DropoutSpec{}), ShapeError);
  EXPECT_THROW(gpu_cudnn().attention_forward_fused(out.t(), lse.t(), qkv.t(), IntTensor{}, d, DropoutSpec{0.1f, 7}),
               ShapeError);
  Dev out32(DType::f32, Shape{1, 8, 64}), qkv32(DType::f32, Shape{1, 8, 192});
  EXPECT_THROW(gpu_cudnn().attention_forward_fused(out32.t(), lse.t(), qkv32.t(), IntTensor{}, d, DropoutSpec{}),
               ShapeError);
}

// No GPU needed: the frontend's own validation of the graphs (forward, deterministic and
// nondeterministic backward: shapes, strides, dtypes and
// its support surface for the compute capability) for the benchmark slices' shapes, on
// Ampere and Hopper. A head dimension cuDNN does not take must fail the same check.
TEST(CudnnAttentionGraphs, TheFrontendAcceptsTheSliceShapesWithoutAGpu) {
  for (int sm : {80, 90})
    for (DType t : {DType::bf16, DType::f16}) {
      SCOPED_TRACE(testing::Message() << "sm_" << sm << " " << dtype_name(t));
      EXPECT_EQ(cuda::validate_cudnn_attention(t, AttentionDims{8, 512, 40, 64, false}, sm), "");  // BERT 10B
      EXPECT_EQ(cuda::validate_cudnn_attention(t, AttentionDims{8, 512, 40, 128, true}, sm), "");  // GPT-2 10B
      // The shapes of the GPU tests: CudnnFusedAttention's, and CudaModel's (13 positions, 3 heads of 16).
      for (const AttentionDims& d : {AttentionDims{2, 67, 2, 64, true}, AttentionDims{2, 256, 3, 64, false},
                                     AttentionDims{1, 130, 2, 128, false}, AttentionDims{1, 200, 1, 128, true},
                                     AttentionDims{1, 40, 2, 32, true}, AttentionDims{2, 13, 3, 16, false},
                                     AttentionDims{2, 13, 3, 16, true}})
        EXPECT_EQ(cuda::validate_cudnn_attention(t, d, sm), "") << d.seq << " positions, head dim " << d.head_dim;
    }
  EXPECT_NE(cuda::validate_cudnn_attention(DType::bf16, AttentionDims{1, 64, 2, 260, false}, 90), "");
}

// ---------------------------------------------------------------- embeddings and rows

class CudaEmbedding : public CudaOps {};
MICS_DTYPE_SUITE(CudaEmbedding);

TEST_P(CudaEmbedding, ForwardAndBackwardMatchReference) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  for (int64_t C : {37, 300}) {
    const int64_t V = 29, P = 17, K = 2, B = 3, S = 13, rows = B * S;
    SCOPED_TRACE(testing::Message() << dname(t) << " C=" << C);
    std::mt19937_64 rng(61);
    const Vec tok = rounded(t, random_vec(rng, V * C)), pos = rounded(t, random_vec(rng, P * C)),
              type = rounded(t, random_vec(rng, K * C));
    Ints ids = random_ints(rng, rows, 0, static_cast<int32_t>(V));
    ids[5] = ids[9] = ids[30] = ids[0];  // repeats
    Ints types = random_ints(rng, rows, 0, static_cast<int32_t>(K));
    DevInts d_ids(ids), d_types(types);
    for (bool with_type : {false, true}) {
      SCOPED_TRACE(with_type ? "with token types" : "no token types");
      H64 r_out(Shape{rows, C}), r_tok(tok, {V, C}), r_pos(pos, {P, C}), r_type(type, {K, C});
      cpu().embedding_forward(r_out.t(), host_ints(ids), host_ints(types), r_tok.t(), r_pos.t(),
                              with_type ? r_type.t() : Tensor{}, S);
      Dev d_out(t, Shape{rows, C}), d_tok(t, {V, C}, tok), d_pos(t, {P, C}, pos), d_type(t, {K, C}, type);
      gpu().embedding_forward(d_out.t(), d_ids.t(), d_types.t(), d_tok.t(), d_pos.t(),
                              with_type ? d_type.t() : Tensor{}, S);
      expect_close(d_out.get(), r_out.vec(), tol(t, 4, 3), "out");
      if (t == DType::f32) {  // same additions in the same order as the CPU's fp32
        H32 c_out(Shape{rows, C}), c_tok(tok, {V, C}), c_pos(pos, {P, C}), c_type(type, {K, C});
        cpu().embedding_forward(c_out.t(), host_ints(ids), host_ints(types), c_tok.t(), c_pos.t(),
                                with_type ? c_type.t() : Tensor{}, S);
        expect_identical(d_out.get(), c_out.vec(), "out vs CPU fp32");
      }

      const Vec g = rounded(t, random_vec(rng, rows * C));
      const Vec tok0 = rounded(t, random_vec(rng, V * C)), pos0 = rounded(t, random_vec(rng, P * C)),
                type0 = rounded(t, random_vec(rng, K * C));
      H64 r_dtok(tok0, {V, C}), r_dpos(pos0, {P, C}), r_dtype(type0, {K, C}), r_g(g, {rows, C});
      cpu().embedding_backward(r_dtok.t(), r_dpos.t(), with_type ? r_dtype.t() : Tensor{}, r_g.t(),
                               host_ints(ids), host_ints(types), S);
      Dev d_dtok(t, {V, C}, tok0), d_dpos(t, {P, C}, pos0), d_dtype(t, {K, C}, type0), d_g(t, {rows, C}, g);
      gpu().embedding_backward(d_dtok.t(), d_dpos.t(), with_type ? d_dtype.t() : Tensor{}, d_g.t(),
                               d_ids.t(), d_types.t(), S);
      // Sums of up to `rows` terms of size 1 onto a prefill of size 1, in fp32.
      const double sr = std::sqrt(double(rows));
      expect_close(d_dtok.get(), r_dtok.vec(), tol(t, 4 * sr, sr + 1), "d_tok (+=)");
      expect_close(d_dpos.get(), r_dpos.vec(), tol(t, 4 * sr, sr + 1), "d_pos (+=)");
      if (with_type)
        expect_close(d_dtype.get(), r_dtype.vec(), tol(t, 4 * sr, sr + 1), "d_type (+=)");
      else
        expect_identical(d_dtype.get(), type0, "d_type untouched");
      if (t == DType::f32) {  // deterministic scheme: the CPU's serial order, bit for bit
        H32 c_dtok(tok0, {V, C}), c_dpos(pos0, {P, C}), c_dtype(type0, {K, C}), c_g(g, {rows, C});
        cpu().embedding_backward(c_dtok.t(), c_dpos.t(), with_type ? c_dtype.t() : Tensor{}, c_g.t(),
                                 host_ints(ids), host_ints(types), S);
        expect_identical(d_dtok.get(), c_dtok.vec(), "d_tok vs CPU fp32");
        expect_identical(d_dpos.get(), c_dpos.vec(), "d_pos vs CPU fp32");
        expect_identical(d_dtype.get(), c_dtype.vec(), "d_type vs CPU fp32");
      }
    }
  }
}

// A padding id that fills most of a large batch: one run of 3840 source rows in the sorted
// order (embedding.cu), next to runs of one or two rows, with columns over several blocks.
// fp32 must still equal the CPU's serial loop bit for bit.
TEST_P(CudaEmbedding, BackwardWithOneIdFillingTheBatch) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const int64_t V = 50, P = 600, C = 300, B = 8, S = 600, rows = B * S;
  std::mt19937_64 rng(63);
  Ints ids = random_ints(rng, rows, 0, static_cast<int32_t>(V));
  for (int64_t r = 0; r < rows; ++r)
    if (r % 5 != 0) ids[static_cast<size_t>(r)] = 3;  // 3840 of 4800 rows
  const Vec g = rounded(t, random_vec(rng, rows * C));
  const Vec tok0 = rounded(t, random_vec(rng, V * C)), pos0 = rounded(t, random_vec(rng, P * C));
  DevInts d_ids(ids);
  H64 r_dtok(tok0, {V, C}), r_dpos(pos0, {P, C}), r_g(g, {rows, C});
  cpu().embedding_backward(r_dtok.t(), r_dpos.t(), Tensor{}, r_g.t(), host_ints(ids), IntTensor{}, S);
  Dev d_dtok(t, {V, C}, tok0), d_dpos(t, {P, C}, pos0), d_g(t, {rows, C}, g);
  gpu().embedding_backward(d_dtok.t(), d_dpos.t(), Tensor{}, d_g.t(), d_ids.t(), IntTensor{}, S);
  // Up to 3840 terms of size 1 onto a prefill of size 1, in fp32.
  const double sr = std::sqrt(double(rows));
  expect_close(d_dtok.get(), r_dtok.vec(), tol(t, 4 * sr, sr + 1), "d_tok (+=)");
  expect_close(d_dpos.get(), r_dpos.vec(), tol(t, 4 * sr, sr + 1), "d_pos (+=)");
  if (t == DType::f32) {
    H32 c_dtok(tok0, {V, C}), c_dpos(pos0, {P, C}), c_g(g, {rows, C});
    cpu().embedding_backward(c_dtok.t(), c_dpos.t(), Tensor{}, c_g.t(), host_ints(ids), IntTensor{}, S);
    expect_identical(d_dtok.get(), c_dtok.vec(), "d_tok vs CPU fp32");
    expect_identical(d_dpos.get(), c_dpos.vec(), "d_pos vs CPU fp32");
  }
}

TEST_P(CudaEmbedding, GatherAndScatterAddRows) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const int64_t V = 29, C = 37;
  std::mt19937_64 rng(71);
  const Vec in = rounded(t, random_vec(rng, V * C));
  Ints rows = random_ints(rng, 13, 0, static_cast<int32_t>(V));
  rows[7] = rows[3] = rows[0];
  const int64_t n = static_cast<int64_t>(rows.size());
  DevInts d_rows(rows);
  H64 r_out(Shape{n, C}), r_in(in, {V, C});
  cpu().gather_rows(r_out.t(), r_in.t(), host_ints(rows));
  Dev d_out(t, Shape{n, C}), d_in(t, {V, C}, in);
  gpu().gather_rows(d_out.t(), d_in.t(), d_rows.t());
  expect_identical(d_out.get(), r_out.vec(), "gather (a copy: exact)");

  const Vec w = rounded(t, random_vec(rng, n * C)), d0 = rounded(t, random_vec(rng, V * C));
  H64 r_d(d0, {V, C}), r_w(w, {n, C});
  cpu().scatter_add_rows(r_d.t(), r_w.t(), host_ints(rows));
  Dev g_d(t, {V, C}, d0), g_w(t, {n, C}, w);
  gpu().scatter_add_rows(g_d.t(), g_w.t(), d_rows.t());
  expect_close(g_d.get(), r_d.vec(), tol(t, 4, 4), "scatter_add (+=)");
  if (t == DType::f32) {
    H32 c_d(d0, {V, C}), c_w(w, {n, C});
    cpu().scatter_add_rows(c_d.t(), c_w.t(), host_ints(rows));
    expect_identical(g_d.get(), c_d.vec(), "scatter_add vs CPU fp32");
  }
}

// ---------------------------------------------------------------- cross-entropy

class CudaCrossEntropy : public CudaOps {};
MICS_DTYPE_SUITE(CudaCrossEntropy);

void check_cross_entropy(DType t, int64_t m, int64_t v, double range, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << dname(t) << " M=" << m << " V=" << v << " logits in +-" << range);
  std::mt19937_64 rng(seed);
  const Vec logits = rounded(t, random_vec(rng, m * v, -range, range));
  Ints labels = random_ints(rng, m, 0, static_cast<int32_t>(v));
  labels[1] = labels[m - 1] = -100;
  labels[2] = -1;
  const double grad_scale = 0.37;
  DevInts d_labels(labels);
  H64 r_losses(Shape{m}), r_d(Shape{m, v}), r_logits(logits, {m, v});
  cpu().cross_entropy(r_losses.t(), r_d.t(), r_logits.t(), host_ints(labels), grad_scale);
  Dev losses(t, Shape{m}), d(t, Shape{m, v}), x(t, {m, v}, logits);
  gpu().cross_entropy(losses.t(), d.t(), x.t(), d_labels.t(), grad_scale);
  // log-sum-exp of V terms in fp32, relative to the largest logit; softmax - onehot: a few
  // fp32 roundings of values <= 1, times grad_scale.
  const Vec got_losses = losses.get(), got_d = d.get();
  expect_close(got_losses, r_losses.vec(), tol(t, 8 + std::sqrt(double(v)), range + std::log(double(v))), "losses");
  expect_close(got_d, r_d.vec(), tol(t, 8, grad_scale), "d_logits");
  for (int64_t i : {int64_t{1}, int64_t{2}, m - 1}) {
    EXPECT_EQ(got_losses[i], 0.0) << "ignored row " << i;
    for (int64_t j = 0; j < v; ++j) ASSERT_EQ(got_d[i * v + j], 0.0) << "ignored row " << i;
  }
  // Without d_logits: the same losses. In place: the same losses and gradient.
  Dev losses2(t, Shape{m});
  gpu().cross_entropy(losses2.t(), Tensor{}, x.t(), d_labels.t(), grad_scale);
  expect_identical(losses2.get(), got_losses, "losses without d_logits");
  Dev losses3(t, Shape{m});
  gpu().cross_entropy(losses3.t(), x.t(), x.t(), d_labels.t(), grad_scale);
  expect_identical(losses3.get(), got_losses, "losses with d_logits aliasing logits");
  expect_identical(x.get(), got_d, "d_logits aliasing logits");
}

TEST_P(CudaCrossEntropy, LossesAndGradientMatchReference) {
  MICS_REQUIRE_CUDA();
  check_cross_entropy(GetParam(), 11, 29, 3.0, 81);
  check_cross_entropy(GetParam(), 67, 131, 30.0, 82);
  check_cross_entropy(GetParam(), 37, 1031, 100.0, 83);
  check_cross_entropy(GetParam(), 5, 50257, 10.0, 84);  // GPT-2's vocabulary
}

// ---------------------------------------------------------------- dropout

class CudaDropout : public CudaOps {};
MICS_DTYPE_SUITE(CudaDropout);

TEST_P(CudaDropout, MaskIsTheCpuMaskBitForBit) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const int64_t n = (1 << 17) + 3;
  std::mt19937_64 rng(91);
  const Vec in = rounded(t, random_vec(rng, n, 0.5, 1.5));  // nonzero: a zero marks a drop
  for (float p : {0.1f, 0.5f}) {
    SCOPED_TRACE(testing::Message() << dname(t) << " p=" << p);
    const DropoutSpec spec{p, 1234};
    H32 c_out(Shape{n}), c_in(in, {n});
    cpu().dropout_forward(c_out.t(), c_in.t(), spec);
    Dev d_out(t, Shape{n}), d_in(t, {n}, in);
    gpu().dropout_forward(d_out.t(), d_in.t(), spec);
    const Vec got = d_out.get();
    size_t mask_diff = 0;
    for (int64_t i = 0; i < n; ++i) mask_diff += (got[i] == 0) != (c_out.data[i] == 0);
    EXPECT_EQ(mask_diff, 0u) << "dropped entries differ from the CPU backend's";
    if (t == DType::f32)
      expect_identical(got, c_out.vec(), "values vs CPU fp32");
    else  // in / (1 - p) in fp32, rounded once
      expect_close(got, c_out.vec(), Tol{kTol(t).u, 0}, "values");
    // Backward: the same mask; in place: the same values.
    Dev g_in(t, Shape{n});
    gpu().dropout_backward(g_in.t(), d_in.t(), spec);
    expect_identical(g_in.get(), got, "backward = forward");
    gpu().dropout_forward(d_in.t(), d_in.t(), spec);
    expect_identical(d_in.get(), got, "in place");
  }
  // Disabled: a copy.
  Dev a(t, {n}, in), b(t, Shape{n});
  gpu().dropout_forward(b.t(), a.t(), DropoutSpec{0.0f, 5});
  expect_identical(b.get(), in, "p = 0 copies");
}

// ---------------------------------------------------------------- adamw

// The gradient is fp32, or a model's own bf16/fp16 gradient (read in place with p = 1):
// widened exactly, so the CPU's update of the same values gives the same bits.
TEST(CudaAdamW, BitForBitWithCpuFp32) {
  MICS_REQUIRE_CUDA();
  for (int64_t offset : {0, 1}) {  // 16-byte aligned (vector path) and not
    for (const AdamWSpec& base : {AdamWSpec{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 0.5f},
                                  AdamWSpec{3e-3f, 0.9f, 0.95f, 1e-6f, 0.0f, 100, 2.0f}}) {
      SCOPED_TRACE(testing::Message() << "offset " << offset << " first step " << base.step);
      const int64_t n = 4099;
      std::mt19937_64 rng(101);
      Vec p = random_vec(rng, n), m = rounded(DType::f32, random_vec(rng, n, -0.1, 0.1)),
          v = rounded(DType::f32, random_vec(rng, n, 0.0, 0.01));
      p = rounded(DType::f32, p);
      if (base.step == 1) m.assign(n, 0.0), v.assign(n, 0.0);
      H32 cp(p, {n}), cm(m, {n}), cv(v, {n});
      auto padded = [&](const Vec& x) {
        Vec r(static_cast<size_t>(offset), 0.0);
        r.insert(r.end(), x.begin(), x.end());
        return r;
      };
      Dev dp(DType::f32, {n + offset}, padded(p)), dm(DType::f32, {n + offset}, padded(m)),
          dv(DType::f32, {n + offset}, padded(v));
      for (int s = 0; s < 5; ++s) {
        SCOPED_TRACE(testing::Message() << "step " << base.step + s);
        Vec g = random_vec(rng, n);
        std::uniform_real_distribution<double> expo(-10, -7);
        for (int64_t i = 0; i < n; i += 7) g[i] *= std::pow(10.0, expo(rng));
        for (int64_t i = 3; i < n; i += 101) g[i] = 0;
        const DType grad_t = s % 3 == 0 ? DType::f32 : s % 3 == 1 ? DType::bf16 : DType::f16;
        SCOPED_TRACE(testing::Message() << "gradient " << dname(grad_t));
        g = rounded(grad_t, g);
        AdamWSpec spec = base;
        spec.step = base.step + s;
        H32 cg(g, {n});
        cpu().adamw(cp.t(), cg.t(), cm.t(), cv.t(), spec, Tensor{});
        Dev dg(grad_t, {n + offset}, padded(g));
        // Every other step also writes a working copy (bf16 or fp16, alternating).
        const DType copy_t = s % 4 == 1 ? DType::bf16 : DType::f16;
        Dev copy(copy_t, {n + offset});
        gpu().adamw(dp.t().slice(offset, {n}), dg.t().slice(offset, {n}), dm.t().slice(offset, {n}),
                    dv.t().slice(offset, {n}), spec, s % 2 == 1 ? copy.t().slice(offset, {n}) : Tensor{});
        auto unpad = [&](const Vec& x) { return Vec(x.begin() + offset, x.end()); };
        // Same operations, each rounded alone, same host-derived scalars: same bits.
        expect_identical(unpad(dp.get()), cp.vec(), "param");
        expect_identical(unpad(dm.get()), cm.vec(), "m");
        expect_identical(unpad(dv.get()), cv.vec(), "v");
        if (s % 2 == 1) expect_identical(unpad(copy.get()), rounded(copy_t, cp.vec()), "working copy");
      }
    }
  }
}

// The side queue (runtime.overlap_optimizer): an update queued there runs behind the main
// queue's earlier work (it reads the gradient a main-queue copy has just written) and before
// the main queue's work after the fence (a copy of the updated parameters): the CPU's bits.
// Large enough that a missing order would show as stale values.
// AdamW queued on `backend`'s side queue behind a gradient written on its main queue, read
// there after the fence: the CPU's bits, over `n` elements starting `offset` elements into
// the buffers (an offset that is not a multiple of 4 takes the element-wise kernel).
void expect_side_queue_update(Backend& backend, int64_t n, int64_t offset) {
  ASSERT_TRUE(backend.has_side_queue());
  std::mt19937_64 rng(202);
  const int64_t total = n + offset;
  const Vec p = rounded(DType::f32, random_vec(rng, total)), g = rounded(DType::f32, random_vec(rng, total));
  const Vec m = rounded(DType::f32, random_vec(rng, total, -0.1, 0.1)), v = rounded(DType::f32, random_vec(rng, total, 0.0, 0.01));
  const AdamWSpec spec{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 7, 0.5f};
  H32 cp(p, {total}), cg(g, {total}), cm(m, {total}), cv(v, {total});
  auto tail = [&](Tensor t) { return t.slice(offset, {n}); };
  cpu().adamw(tail(cp.t()), tail(cg.t()), tail(cm.t()), tail(cv.t()), spec, Tensor{});
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round << ", n " << n << ", offset " << offset);
    Dev dp(DType::f32, {total}, p), dm(DType::f32, {total}, m), dv(DType::f32, {total}, v), source(DType::f32, {total}, g);
    Dev dg(DType::f32, {total}, Vec(static_cast<size_t>(total), 0.0)), out(DType::f32, {total});
    backend.cast(dg.t(), source.t());  // the gradient, written on the main queue
    const int64_t fence = backend.run_on_side_queue(
        [&] { backend.adamw(tail(dp.t()), tail(dg.t()), tail(dm.t()), tail(dv.t()), spec, Tensor{}); });
    backend.wait_for_fence(fence);
    backend.cast(out.t(), dp.t());  // read on the main queue after the fence
    backend.synchronize();  // (the buffers are read back through gpu()'s stream)
    expect_identical(out.get(), cp.vec(), "param read after the fence");
    expect_identical(dm.get(), cm.vec(), "m");
    expect_identical(dv.get(), cv.vec(), "v");
  }
}

TEST(CudaSideQueue, UpdateRunsBehindEarlierWorkAndBeforeFencedWork) {
  MICS_REQUIRE_CUDA();
  expect_side_queue_update(gpu(), int64_t{1} << 22, 0);
}

// Only the update and the queued sums have scratch of their own on the side queue; an op
// sharing the main stream's (a GEMM, a sum read back) is refused there, and the backend
// goes on as before.
TEST(CudaSideQueue, OpsWithTheMainStreamsScratchAreRefusedThere) {
  MICS_REQUIRE_CUDA();
  Dev in(DType::f32, {4, 8}, Vec(32, 1.0)), w(DType::f32, {16, 8}, Vec(128, 0.5)), out(DType::f32, {4, 16});
  EXPECT_THROW(gpu().run_on_side_queue([&] { gpu().linear_forward(out.t(), in.t(), w.t(), Tensor{}); }),
               std::logic_error);
  EXPECT_THROW(gpu().run_on_side_queue([&] { (void)gpu().sum(in.t()); }), std::logic_error);
  gpu().linear_forward(out.t(), in.t(), w.t(), Tensor{});
  expect_identical(out.get(), Vec(64, 4.0), "a GEMM on the main stream after the refusals");
}

// The main queue's stand at a fence is timed (the metrics' optimizer_wait_s): an update of
// 2^25 elements (~0.9 GB of traffic) queued on the side, waited for at once by an idle
// main queue, keeps it standing a measurable while; taken once, the count starts again.
TEST(CudaSideQueue, TheMainQueuesWaitAtAFenceIsTimed) {
  MICS_REQUIRE_CUDA();
  const int64_t n = int64_t{1} << 25;
  Dev p(DType::f32, {n}, Vec(static_cast<size_t>(n), 1.0)), g(DType::f32, {n}, Vec(static_cast<size_t>(n), 0.5));
  Dev m(DType::f32, {n}, Vec(static_cast<size_t>(n), 0.0)), v(DType::f32, {n}, Vec(static_cast<size_t>(n), 0.0));
  gpu().take_fence_wait_s();  // what earlier tests left
  const AdamWSpec spec{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f};
  const int64_t fence = gpu().run_on_side_queue([&] { gpu().adamw(p.t(), g.t(), m.t(), v.t(), spec, Tensor{}); });
  gpu().wait_for_fence(fence);
  gpu().synchronize();
  const double waited = gpu().take_fence_wait_s();
  EXPECT_GT(waited, 20e-6) << "the main queue reached the fence long before a 0.9 GB update could end";
  EXPECT_LT(waited, 1.0);
  EXPECT_EQ(gpu().take_fence_wait_s(), 0.0);
}

// runtime.overlap_optimizer_sms: the update in at most 3 blocks of 1024 threads striding
// over chunks of 786432 elements (6 and 2 chunks here; both kernels, the vector kernel's
// tail, a last chunk shorter than the others), and unchunked.
TEST(CudaSideQueue, BoundedToAFewSmsTheUpdateIsTheSame) {
  MICS_REQUIRE_CUDA();
  CudaBackendOptions options;
  options.side_queue_sms = 3;
  const std::unique_ptr<Backend> bounded = make_cuda_backend(0, options);
  expect_side_queue_update(*bounded, (int64_t{1} << 22) + 3, 0);
  expect_side_queue_update(*bounded, (int64_t{1} << 20) + 5, 1);
  // Unchunked (runtime.overlap_optimizer_chunked false): one launch of 3 blocks striding
  // over the whole span.
  options.side_queue_chunked = false;
  const std::unique_ptr<Backend> whole = make_cuda_backend(0, options);
  expect_side_queue_update(*whole, (int64_t{1} << 22) + 3, 0);
}

// runtime.overlap_optimizer_sms with the update unchunked holds those SMs to its end: while
// such an update may still run (queued, not yet waited for), the main stream's GEMMs are
// planned for the SMs it leaves (cuBLASLt's SM count target, counted where the plan's
// descriptor holds it); once the main stream has waited at its fence, or after a
// synchronize, for every SM again. Chunked, or with the target turned off (the ops
// bench's comparison), never. The backend also ends the partition early when it sees the
// update done, so each update here starts behind a ~20 ms fp32 product on the main stream
// (the side queue waits for the main stream's work queued before it): it cannot be done
// when the GEMM right behind it is queued. Small integers in fp32: every algorithm gives
// the exact product, so the outputs are compared bit for bit.
TEST(CudaSideQueue, GemmsBesideAnUnchunkedBoundedUpdateArePlannedForTheSmsItLeaves) {
  MICS_REQUIRE_CUDA();
  const int64_t rows = 64, in_w = 96, out_w = 128, n = int64_t{1} << 22, wide = 8192;
  std::mt19937_64 rng(303);
  std::uniform_int_distribution<int> small(-3, 3);
  Vec x(static_cast<size_t>(rows * in_w)), w(static_cast<size_t>(out_w * in_w)), want(static_cast<size_t>(rows * out_w));
  for (double& e : x) e = small(rng);
  for (double& e : w) e = small(rng);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out_w; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in_w; ++i) s += x[r * in_w + i] * w[o * in_w + i];
      want[r * out_w + o] = s;
    }
  Dev in(DType::f32, {rows, in_w}, x), weight(DType::f32, {out_w, in_w}, w), out(DType::f32, {rows, out_w}),
      beside(DType::f32, {rows, out_w});
  // The update's buffers and the blocking product's (1.1 TFLOP in fp32, ~20 ms), zeros.
  std::vector<DeviceBuffer> zeros;
  for (int64_t count : {n, n, n, n, wide * wide, wide * wide, wide * wide}) {
    zeros.emplace_back(gpu(), static_cast<size_t>(count) * sizeof(float));
    gpu().fill_zero(zeros.back().view(DType::f32, {count}));
  }
  gpu().synchronize();
  const Tensor p = zeros[0].view(DType::f32, {n}), g = zeros[1].view(DType::f32, {n}), m = zeros[2].view(DType::f32, {n}),
               v = zeros[3].view(DType::f32, {n});
  const Tensor big_in = zeros[4].view(DType::f32, {wide, wide}), big_w = zeros[5].view(DType::f32, {wide, wide}),
               big_out = zeros[6].view(DType::f32, {wide, wide});
  const AdamWSpec spec{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f};
  for (const auto& [chunked, target] : {std::pair{false, true}, std::pair{true, true}, std::pair{false, false}}) {
    SCOPED_TRACE(testing::Message() << (chunked ? "chunked" : "unchunked") << (target ? "" : ", target off"));
    const bool partitioned = !chunked && target;
    CudaBackendOptions options;
    options.side_queue_sms = 8;
    options.side_queue_chunked = chunked;
    options.partition_gemms = target;
    const std::unique_ptr<Backend> be = make_cuda_backend(0, options);
    // A GEMM, counted when planned for fewer SMs; its output exact either way.
    auto product = [&](const char* what) {
      const int64_t before = cuda_sm_targeted_gemm_calls(*be);
      be->fill_zero(out.t());
      be->linear_forward(out.t(), in.t(), weight.t(), Tensor{});
      be->synchronize();
      expect_identical(out.get(), want, what);
      return cuda_sm_targeted_gemm_calls(*be) - before;
    };
    // An update queued behind the blocking product (itself planned for every SM: nothing
    // partitions the SMs when it is queued).
    auto update = [&] {
      be->linear_forward(big_out, big_in, big_w, Tensor{});
      return be->run_on_side_queue([&] { be->adamw(p, g, m, v, spec, Tensor{}); });
    };
    EXPECT_EQ(product("before any update"), 0);
    int64_t fence = update();
    const int64_t before = cuda_sm_targeted_gemm_calls(*be);
    be->linear_forward(beside.t(), in.t(), weight.t(), Tensor{});
    EXPECT_EQ(cuda_sm_targeted_gemm_calls(*be) - before, partitioned ? 1 : 0) << "beside the update";
    be->wait_for_fence(fence);
    be->linear_forward(out.t(), in.t(), weight.t(), Tensor{});
    EXPECT_EQ(cuda_sm_targeted_gemm_calls(*be) - before, partitioned ? 1 : 0) << "after the wait at its fence";
    be->synchronize();
    expect_identical(beside.get(), want, "beside the update");
    expect_identical(out.get(), want, "after the wait at its fence");
    // Two updates: waiting for the first leaves the second's partition in place.
    const int64_t first = update();
    fence = be->run_on_side_queue([&] { be->adamw(p, g, m, v, spec, Tensor{}); });
    be->wait_for_fence(first);
    const int64_t later = cuda_sm_targeted_gemm_calls(*be);
    be->linear_forward(beside.t(), in.t(), weight.t(), Tensor{});
    EXPECT_EQ(cuda_sm_targeted_gemm_calls(*be) - later, partitioned ? 1 : 0) << "beside the second of two updates";
    be->wait_for_fence(fence);
    be->synchronize();
    expect_identical(beside.get(), want, "beside the second of two updates");
    (void)update();
    be->synchronize();
    EXPECT_EQ(product("after a synchronize"), 0);
  }
}

// ---------------------------------------------------------------- element-wise

class CudaElementwise : public CudaOps {};
MICS_DTYPE_SUITE(CudaElementwise);

TEST_P(CudaElementwise, AddScaleFillZero) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  for (int64_t n : {1031, 4096, 7}) {
    SCOPED_TRACE(testing::Message() << dname(t) << " n=" << n);
    std::mt19937_64 rng(111);
    const Vec a = rounded(t, random_vec(rng, n)), b = rounded(t, random_vec(rng, n));
    Vec sum(n);
    for (int64_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
    // One rounding: u |x|, or half the smallest subnormal (fp16's 2^-24 matters here).
    const Tol one_rounding{kTol(t).u, t == DType::f16 ? 0x1p-25 : 0.0};
    Dev out(t, Shape{n}), da(t, {n}, a), db(t, {n}, b);
    gpu().add(out.t(), da.t(), db.t());
    expect_close(out.get(), sum, one_rounding, "add");
    if (t == DType::f32) expect_identical(out.get(), rounded(t, sum), "add: fp32 is exact rounding");
    gpu().add(da.t(), da.t(), db.t());  // out aliasing a
    expect_identical(da.get(), out.get(), "add in place");
    // Unaligned views (the element-wise path rather than the 16-byte one).
    if (n > 2) {
      Dev o2(t, Shape{n});
      gpu().add(o2.t().slice(1, {n - 2}), db.t().slice(1, {n - 2}), db.t().slice(0, {n - 2}));
      Vec want(static_cast<size_t>(n - 2));
      for (int64_t i = 0; i < n - 2; ++i) want[i] = b[i + 1] + b[i];
      const Vec got = o2.get();
      expect_close(Vec(got.begin() + 1, got.end() - 1), want, one_rounding, "add unaligned");
    }
    const double alpha = -0.3;
    Vec scaled(n);
    for (int64_t i = 0; i < n; ++i) scaled[i] = b[i] * alpha;
    gpu().scale(db.t(), alpha);
    expect_close(db.get(), scaled, one_rounding, "scale");
    gpu().fill_zero(db.t());
    expect_identical(db.get(), Vec(n, 0.0), "fill_zero");
  }
}

TEST(CudaElementwiseMixed, AddAcrossDtypesRoundsOnceToOut) {
  MICS_REQUIRE_CUDA();
  const int64_t n = 1031;
  std::mt19937_64 rng(114);
  for (DType to : {DType::f32, DType::bf16, DType::f16})
    for (DType ta : {DType::f32, DType::bf16, DType::f16})
      for (DType tb : {DType::f32, DType::bf16, DType::f16}) {
        SCOPED_TRACE(testing::Message() << dname(to) << " = " << dname(ta) << " + " << dname(tb));
        const Vec a = rounded(ta, random_vec(rng, n)), b = rounded(tb, random_vec(rng, n));
        Vec sum(n);
        for (int64_t i = 0; i < n; ++i) sum[i] = a[i] + b[i];
        Dev out(to, Shape{n}), da(ta, {n}, a), db(tb, {n}, b);
        gpu().add(out.t(), da.t(), db.t());
        // fp32 sum of two values exact in fp32 (one rounding u32), then one rounding to out.
        expect_close(out.get(), sum, Tol{kTol(to).u + kU32, to == DType::f16 ? 0x1p-25 : 0.0},
                     "mixed add");
      }
}

TEST_P(CudaElementwise, SumSumSquaresCountNonfinite) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const int64_t n = 300007;  // more blocks than the partials: grid-stride loops
  std::mt19937_64 rng(112);
  Vec x = rounded(t, random_vec(rng, n, -2, 3));
  double s = 0, s2 = 0, s_abs = 0;
  for (double v : x) s += v, s2 += v * v, s_abs += v * v + std::abs(v);
  Dev dx(t, {n}, x);
  const Tol tt{0, double(n) * 0x1p-53 * s_abs};  // accumulated in double
  expect_close({gpu().sum(dx.t())}, {s}, tt, "sum");
  expect_close({gpu().sum_squares(dx.t())}, {s2}, tt, "sum_squares");
  EXPECT_EQ(gpu().count_nonfinite(dx.t()), 0);
  // Largest finite values must not count; each NaN / Inf must.
  const double big = t == DType::f32 ? std::numeric_limits<float>::max()
                     : t == DType::bf16 ? 0x1.fep127 : 65504.0;
  x[10] = big;
  x[12] = -big;
  int64_t planted = 0;
  for (int64_t i = 100; i < n; i += 3971, ++planted) {
    const int kind = static_cast<int>(planted % 3);
    x[i] = kind == 0 ? std::numeric_limits<double>::quiet_NaN()
           : kind == 1 ? std::numeric_limits<double>::infinity()
                       : -std::numeric_limits<double>::infinity();
  }
  Dev dy(t, {n}, x);
  EXPECT_EQ(gpu().count_nonfinite(dy.t()), planted);
  // Empty views.
  EXPECT_EQ(gpu().sum(dy.t().slice(0, {0})), 0.0);
  EXPECT_EQ(gpu().count_nonfinite(dy.t().slice(0, {0})), 0);
}

// The sum of squares left on the device (the gradient norm, layer by layer): its own grid
// (one short block per 8192 elements; here more blocks than the fold has threads, and
// none), on the main stream and on the side queue, read back after a synchronisation.
TEST_P(CudaElementwise, SumSquaresIntoStaysOnTheDevice) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  for (int64_t n : {int64_t{0}, int64_t{13}, int64_t{1100} * 8192 + 5}) {
    SCOPED_TRACE(testing::Message() << "n " << n);
    std::mt19937_64 rng(113);
    const Vec x = rounded(t, random_vec(rng, n, -2, 3));
    double s2 = 0;
    for (double v : x) s2 += v * v;
    Dev dx(t, {n}, x), on_main(DType::f64, {1}), on_side(DType::f64, {1});
    gpu().sum_squares_into(on_main.t(), dx.t());
    gpu().run_on_side_queue([&] { gpu().sum_squares_into(on_side.t(), dx.t()); });
    gpu().synchronize();
    const Tol tt{0, double(n) * 0x1p-53 * s2};
    expect_close(on_main.get(), {s2}, tt, "on the main stream");
    expect_identical(on_side.get(), on_main.get(), "on the side queue");
  }
  Dev dx(t, {4}), wrong(DType::f32, {1});
  EXPECT_THROW(gpu().sum_squares_into(wrong.t(), dx.t()), ShapeError);
}

// The element-wise maps take 16-byte accesses on aligned views and single elements on
// others (kernels/cuda/vector_map.cuh); both must give the same bits, tail included.
TEST_P(CudaElementwise, AlignedAndUnalignedViewsGiveTheSameBits) {
  MICS_REQUIRE_CUDA();
  const DType t = GetParam();
  const int64_t n = 8 * 129 + 5;  // whole packs of 8 and a tail
  std::mt19937_64 rng(115);
  const Vec x = rounded(t, random_vec(rng, n, -4, 4)), y = rounded(t, random_vec(rng, n, -4, 4));
  // Runs `op` on views at element offset 0 (aligned) and 1 (not), returns both results.
  auto both = [&](DType out_t, auto op) {
    std::vector<Vec> r;
    for (int64_t offset : {0, 1}) {
      auto padded = [&](const Vec& v) {
        Vec p(static_cast<size_t>(offset), 0.0);
        p.insert(p.end(), v.begin(), v.end());
        return p;
      };
      Dev dx(t, {n + offset}, padded(x)), dy(t, {n + offset}, padded(y)), out(out_t, Shape{n + offset});
      op(out.t().slice(offset, {n}), dx.t().slice(offset, {n}), dy.t().slice(offset, {n}));
      const Vec got = out.get();
      r.emplace_back(got.begin() + offset, got.end());
    }
    return r;
  };
  auto check = [&](const char* what, DType out_t, auto op) {
    const std::vector<Vec> r = both(out_t, op);
    expect_identical(r[1], r[0], std::string(what) + ": unaligned vs aligned");
  };
  for (GeluKind kind : {GeluKind::erf, GeluKind::tanh}) {
    check("gelu forward", t, [&](Tensor o, Tensor a, Tensor) { gpu().gelu_forward(o, a, kind); });
    check("gelu backward", t, [&](Tensor o, Tensor a, Tensor b) { gpu().gelu_backward(o, a, b, kind); });
  }
  check("dropout", t, [&](Tensor o, Tensor a, Tensor) { gpu().dropout_forward(o, a, DropoutSpec{0.3f, 77}); });
  check("add", t, [&](Tensor o, Tensor a, Tensor b) { gpu().add(o, a, b); });
  check("scale", t, [&](Tensor o, Tensor a, Tensor) {
    gpu().cast(o, a);
    gpu().scale(o, 0.7);
  });
  for (DType to : {DType::f32, DType::bf16, DType::f16}) {
    check("cast", to, [&](Tensor o, Tensor a, Tensor) { gpu().cast(o, a); });
    check("mixed add", to, [&](Tensor o, Tensor a, Tensor b) {
      gpu().fill_zero(o);
      gpu().add(o, o, a);
      gpu().add(o, o, b);
    });
  }
}

TEST(CudaCast, ConvertsBetweenEveryPairExactly) {
  MICS_REQUIRE_CUDA();
  const int64_t n = 517;
  std::mt19937_64 rng(113);
  for (DType from : {DType::f32, DType::bf16, DType::f16})
    for (DType to : {DType::f32, DType::bf16, DType::f16}) {
      SCOPED_TRACE(testing::Message() << dname(from) << " -> " << dname(to));
      Vec x = random_vec(rng, n, -1e3, 1e3);
      x[0] = 0, x[1] = -0.0, x[2] = 1e-6, x[3] = -3.5;
      x = rounded(from, x);
      Dev din(from, {n}, x), dout(to, Shape{n});
      gpu().cast(dout.t(), din.t());
      // Round to nearest even from the exact input: the host conversions give the same bits.
      expect_identical(dout.get(), rounded(to, x), "cast");
    }
  std::vector<double> wide(4, 1.0);
  Dev f(DType::f32, Shape{4});
  EXPECT_THROW(gpu().cast(f.t(), Tensor(wide.data(), {4})), ShapeError);  // fp64 is not a CUDA dtype
}

// ---------------------------------------------------------------- argument errors

TEST(CudaArgumentErrors, ShapeAndDtypeMismatchThrowShapeError) {
  MICS_REQUIRE_CUDA();
  DeviceBuffer raw(gpu(), 8000);
  auto f = [&](Shape s) { return raw.view(DType::f32, s); };
  auto bf = [&](Shape s) { return raw.view(DType::bf16, s); };
  auto dd = [&](Shape s) { return raw.view(DType::f64, s); };
  DeviceBuffer ids_buf(gpu(), 64);
  const IntTensor ids = ids_buf.int_view({14});
  EXPECT_THROW(gpu().linear_forward(f({7, 4}), f({7, 13}), f({5, 13}), Tensor{}), ShapeError);
  EXPECT_THROW(gpu().linear_forward(f({7, 5}), f({7, 13}), f({5, 13}), f({4})), ShapeError);
  EXPECT_THROW(gpu().linear_backward(f({7, 13}), f({5, 12}), Tensor{}, f({7, 5}), f({7, 13}),
                                     f({5, 13}), Accumulate::no),
               ShapeError);
  EXPECT_THROW(gpu().layernorm_forward(f({7, 37}), f({7}), f({7}), f({7, 37}), f({37}), f({36}), 1e-5f),
               ShapeError);
  const AttentionDims dims{2, 7, 3, 5, false};
  EXPECT_THROW(gpu().attention_forward(f({2, 7, 15}), f({2, 3, 7, 6}), f({2, 7, 45}), IntTensor{},
                                       dims, DropoutSpec{}),
               ShapeError);
  EXPECT_THROW(gpu().cross_entropy(f({7}), Tensor{}, f({7, 29}), ids, 1.0), ShapeError);
  EXPECT_THROW(gpu().add(f({10}), f({10}), f({11})), ShapeError);
  EXPECT_THROW(gpu().embedding_forward(f({13, 8}), ids, IntTensor{}, f({29, 8}), f({17, 8}), Tensor{}, 7),
               ShapeError);
  // Mixed dtypes where the op needs one; fp64 anywhere.
  EXPECT_THROW(gpu().linear_forward(bf({7, 5}), f({7, 13}), bf({5, 13}), Tensor{}), ShapeError);
  EXPECT_THROW(gpu().linear_forward(f({7, 5}), f({7, 13}), f({5, 13}), bf({5})), ShapeError);
  EXPECT_THROW(gpu().gelu_forward(bf({10}), f({10}), GeluKind::erf), ShapeError);
  EXPECT_THROW(gpu().gelu_forward(dd({10}), dd({10}), GeluKind::erf), ShapeError);
  EXPECT_THROW(gpu().layernorm_forward(bf({7, 37}), bf({7}), f({7}), bf({7, 37}), bf({37}), bf({37}), 1e-5f),
               ShapeError);
  EXPECT_THROW(gpu().layernorm_forward(bf({7, 37}), dd({7}), dd({7}), bf({7, 37}), bf({37}), bf({37}), 1e-5f),
               ShapeError);
  EXPECT_THROW(gpu().adamw(bf({10}), bf({10}), bf({10}), bf({10}), AdamWSpec{}, Tensor{}), ShapeError);
  EXPECT_THROW(gpu().adamw(f({10}), dd({10}), f({10}), f({10}), AdamWSpec{}, Tensor{}), ShapeError);
  EXPECT_THROW(gpu().add(dd({10}), f({10}), f({10})), ShapeError);
  EXPECT_THROW(gpu().sum(dd({10})), ShapeError);
  EXPECT_THROW(gpu().dropout_forward(bf({10}), f({10}), DropoutSpec{0.5f, 1}), ShapeError);
  gpu().synchronize();  // nothing was launched by the refused calls
}

TEST(CudaArgumentErrors, BadIndicesThrowAtTheNextSynchronisation) {
  MICS_REQUIRE_CUDA();
  const int64_t V = 29, P = 17, C = 8, S = 7;
  Dev out(DType::f32, Shape{14, C}), tok(DType::f32, {V, C}, Vec(V * C, 1.0)),
      pos(DType::f32, {P, C}, Vec(P * C, 1.0));
  Ints bad_ids(14, 3);
  bad_ids[5] = 29;
  DevInts d_bad(bad_ids);
  gpu().embedding_forward(out.t(), d_bad.t(), IntTensor{}, tok.t(), pos.t(), Tensor{}, S);
  EXPECT_THROW(gpu().synchronize(), std::out_of_range);
  gpu().synchronize();  // the error word was cleared: the backend goes on

  Ints labels(7, 1);
  labels[3] = 100;
  DevInts d_labels(labels);
  Dev losses(DType::f32, Shape{7}), logits(DType::f32, {7, 29}, Vec(7 * 29, 0.5));
  gpu().cross_entropy(losses.t(), Tensor{}, logits.t(), d_labels.t(), 1.0);
  EXPECT_THROW(gpu().synchronize(), std::out_of_range);

  Ints rows{0, 3, -1};
  DevInts d_rows(rows);
  Dev g(DType::f32, Shape{3, C});
  gpu().gather_rows(g.t(), tok.t(), d_rows.t());
  EXPECT_THROW(gpu().synchronize(), ShapeError);
  gpu().scatter_add_rows(tok.t(), g.t(), d_rows.t());
  EXPECT_THROW(gpu().synchronize(), ShapeError);
  // And ordinary work still runs.
  EXPECT_EQ(gpu().sum(pos.t()), double(P * C));
  EXPECT_THROW(gpu().embedding_forward(out.t(), d_bad.t(), IntTensor{}, tok.t(), pos.t().slice(0, {5, C}),
                                       Tensor{}, S),
               std::out_of_range);  // sequence longer than the position table
}

TEST(CudaGemm, FallbackUse) {
  MICS_REQUIRE_CUDA();
  // Informational: how many GEMMs so far went to the fallback kernel (cuBLASLt declined).
  std::printf("  GEMMs computed by the fallback kernel so far: %lld\n",
              static_cast<long long>(cuda_gemm_fallback_calls(gpu())));
}

}  // namespace
}  // namespace mics
