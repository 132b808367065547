// The CUDA fused attention kernels (kernels/cuda/attention_fused_kernels.cuh), compiled for
// the host and run under tests/emulation/cuda_emulator.h, against the CPU backend's fused
// attention in float64: the kernels' tiling, masking, fragment layout, online softmax and
// dropout are checked on every build, GPU or not. tests/cuda/test_cuda_ops.cpp
// CudaFusedAttention runs the same kernels on a GPU; this test takes its cases, its inputs
// (drawn in double, rounded to the dtype, the same exact values to both sides) and its
// tolerances, and launches as attention_fused.cu's launchers do. Emulated threads switch at
// every warp-wide operation, so the problems stay small: the cases take ~8 s on 2 cores.
//
// Outputs start as all-ones bits (a NaN the kernels never produce), so an entry a kernel
// does not write is caught and named; each buffer is followed by a guard of the same bits,
// which must stay untouched (and which poisons any read past an input's end).
// MICS_TOL_REPORT=1 prints each comparison's worst error as a fraction of its tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/device_numerics.h"
#include "tests/cuda/host_dtype.h"
#include "tests/numerics/expect_close.h"

// The emulator stands in for the CUDA headers the kernels expect, so it comes first.
#include "tests/emulation/cuda_emulator.h"
#include "kernels/cuda/attention_fused_kernels.cuh"

namespace mics {
namespace {

Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

// Tolerances, inputs and the gradient check: tests/cuda/device_numerics.h, shared with
// tests/cuda/test_cuda_ops.cpp.
using device_test::expect_qkv_gradient_close;
using device_test::kTol;
using device_test::kU32;
using device_test::largest_score;
using device_test::make_key_keep;
using device_test::max_abs;
using device_test::random_vec;
using device_test::tol;  // hides namespace mics::tol for calls; tol::Tol still names the type
using Ints = std::vector<int32_t>;

// ---------------------------------------------------------------- emulated device buffers

// Entries after each buffer: more than a row of any of them (3C <= 768 here), so that a row
// written one past the end stays inside and is reported.
constexpr size_t kGuard = 1024;

template <class E>
E all_ones() {
  E e;
  std::memset(&e, 0xff, sizeof e);
  return e;
}
template <class E>
bool is_all_ones(const E& e) {
  const E ones = all_ones<E>();
  return std::memcmp(&e, &ones, sizeof e) == 0;
}

// An output of n entries the kernels have yet to write.
template <class E>
std::vector<E> unwritten(size_t n) {
  return std::vector<E>(n + kGuard, all_ones<E>());
}

// Values in the dtype (the exact ones the test passes to the reference), then the guard.
template <class E>
std::vector<E> device_copy(const Vec& v) {
  std::vector<E> out = unwritten<E>(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<E, float>)
      out[i] = static_cast<float>(v[i]);
    else
      out[i] = cuda::from_f<E>(static_cast<float>(v[i]));
  }
  return out;
}

// The first n entries, after checking that the kernels wrote each of them and nothing past.
template <class E>
Vec written_values(const std::vector<E>& buffer, size_t n, const std::string& what) {
  size_t never_written = 0, first = 0;
  for (size_t i = 0; i < n; ++i)
    if (is_all_ones(buffer[i]) && never_written++ == 0) first = i;
  EXPECT_EQ(never_written, 0u) << what << ": " << never_written << " of " << n << " entries never written; first "
                               << first;
  for (size_t i = n; i < buffer.size(); ++i)
    if (!is_all_ones(buffer[i])) {
      ADD_FAILURE() << what << ": written past the end, at entry " << i << " of " << n;
      break;
    }
  Vec v(n);
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<E, float>)
      v[i] = buffer[i];
    else
      v[i] = cuda::to_f(buffer[i]);
  }
  return v;
}

// ---------------------------------------------------------------- the test

struct AttnCase {
  const char* name;
  int64_t batch, seq, heads, head_dim;
  bool causal, padding;
  float drop_prob;
};

// T the kernels' element type (DType t), D the head dimension.
template <class T, int D>
void check_fused_attention(const AttnCase& c, DType t) {
  using namespace cuda;
  const int64_t B = c.batch, S = c.seq, H = c.heads, C = H * D;
  const size_t n_qkv = static_cast<size_t>(B * S * 3 * C), n_out = static_cast<size_t>(B * S * C),
               n_rows = static_cast<size_t>(B * H * S);
  const AttentionDims dims{B, S, H, D, c.causal};
  const DropoutSpec drop{c.drop_prob, 0xF05Eull};
  std::mt19937_64 rng(57);
  const Vec qkv = rounded(t, random_vec(rng, n_qkv, -1.5, 1.5));
  Ints keep = c.padding ? make_key_keep(B, S) : Ints{};
  const IntTensor keep_view{keep.data(), Shape{static_cast<int64_t>(keep.size())}};
  const double keep_scale = 1 / (1 - double(c.drop_prob));
  const double smax = largest_score(qkv, B, S, H, D);

  // As attention_fused.cu's make_args and launchers.
  FusedArgs f{};
  f.seq = static_cast<int>(S);
  f.heads = static_cast<int>(H);
  f.causal = c.causal;
  f.scale = 1.0f / sqrtf(static_cast<float>(D));
  f.drop_prob = c.drop_prob;
  f.keep_scale = c.drop_prob > 0.0f ? 1.0f / (1.0f - c.drop_prob) : 1.0f;
  f.drop_seed = drop.seed;
  f.key_keep = c.padding ? keep.data() : nullptr;
  const dim3 grid{static_cast<unsigned>((S + kTile - 1) / kTile), static_cast<unsigned>(B * H), 1};

  // ---- forward
  Vec r_out(n_out), r_lse(n_rows), r_qkv = qkv;
  cpu().attention_forward_fused(Tensor(r_out.data(), {B, S, C}), Tensor(r_lse.data(), {B, H, S}),
                                Tensor(r_qkv.data(), {B, S, 3 * C}), keep_view, dims, drop);
  std::vector<T> d_qkv = device_copy<T>(qkv), d_out = unwritten<T>(n_out);
  std::vector<float> d_lse = unwritten<float>(n_rows);
  cuda_emulator::launch(grid, kCtaThreads, 0, fused_forward_kernel<T, D>, d_out.data(), d_lse.data(), d_qkv.data(),
                        f);
  // Tolerances as CudaFusedAttention: the unnormalised probabilities enter P V rounded to
  // the dtype (u each, relative, growing with the scores through exp); lse: fp32 sums of
  // exp and a log, absolute ~1e-6 (1 + smax).
  const double growth = 4 * (std::sqrt(double(D)) + 2.25 * std::sqrt(double(D)) + std::sqrt(double(S)));
  expect_close(written_values(d_out, n_out, "out"), r_out, tol(t, growth, 1.5 * keep_scale, 2 * smax + 3), "out");
  const Vec got_lse = written_values(d_lse, n_rows, "lse");
  Vec g_fin, w_fin;
  for (size_t i = 0; i < n_rows; ++i) {
    if (std::isinf(r_lse[i])) {
      EXPECT_EQ(got_lse[i], r_lse[i]) << "lse row " << i << " (no key shown)";
      continue;
    }
    g_fin.push_back(got_lse[i]);
    w_fin.push_back(r_lse[i]);
  }
  expect_close(g_fin, w_fin, tol::Tol{1e-6, 4e-6 * (1 + smax + std::log(double(S)))}, "lse");

  // ---- backward, from the reference's out and lse (rounded as the device keeps them)
  const Vec out = rounded(t, r_out), w = rounded(t, random_vec(rng, n_out)), lse = rounded(DType::f32, r_lse);
  Vec r_dqkv(n_qkv), r_w = w, r_o = out, r_l = lse;
  cpu().attention_backward_fused(Tensor(r_dqkv.data(), {B, S, 3 * C}), Tensor(r_w.data(), {B, S, C}),
                                 Tensor(r_qkv.data(), {B, S, 3 * C}), Tensor(r_o.data(), {B, S, C}),
                                 Tensor(r_l.data(), {B, H, S}), keep_view, dims, drop);
  const std::vector<T> d_w = device_copy<T>(w), d_o = device_copy<T>(out);
  const std::vector<float> d_l = device_copy<float>(lse);
  std::vector<float> d_delta = unwritten<float>(n_rows);
  std::vector<T> d_dqkv = unwritten<T>(n_qkv);
  constexpr int kDeltaThreads = 256;  // device_common.cuh's kThreads
  cuda_emulator::launch(dim3{static_cast<unsigned>((n_rows + kDeltaThreads - 1) / kDeltaThreads), 1, 1},
                        kDeltaThreads, 0, fused_delta_kernel<T>, d_delta.data(), d_w.data(), d_o.data(),
                        static_cast<int64_t>(n_rows), f.seq, f.heads, D);
  written_values(d_delta, n_rows, "delta");  // (its values are judged through d_qkv)
  cuda_emulator::launch(grid, kCtaThreads, dkdv_shared_elements<D>() * sizeof(T), fused_backward_dkdv_kernel<T, D>,
                        d_dqkv.data(), d_w.data(), d_qkv.data(), d_l.data(), d_delta.data(), f);
  cuda_emulator::launch(grid, kCtaThreads, dq_shared_elements<D>() * sizeof(T), fused_backward_dq_kernel<T, D>,
                        d_dqkv.data(), d_w.data(), d_qkv.data(), d_l.data(), d_delta.data(), f);
  expect_qkv_gradient_close(written_values(d_dqkv, n_qkv, "d_qkv"), r_dqkv, t, C, S, growth, keep_scale);
}

class FusedAttentionEmulated : public ::testing::TestWithParam<std::tuple<AttnCase, DType>> {};

TEST_P(FusedAttentionEmulated, ForwardAndBackwardMatchReference) {
  const auto [c, t] = GetParam();
  if (t == DType::bf16 && c.head_dim == 64) return check_fused_attention<cuda::bf16, 64>(c, t);
  if (t == DType::bf16 && c.head_dim == 128) return check_fused_attention<cuda::bf16, 128>(c, t);
  if (t == DType::f16 && c.head_dim == 64) return check_fused_attention<cuda::f16, 64>(c, t);
  if (t == DType::f16 && c.head_dim == 128) return check_fused_attention<cuda::f16, 128>(c, t);
  FAIL() << "test bug: the kernels have no " << dtype_name(t) << " / head dim " << c.head_dim;
}

// CudaFusedAttention's cases, and one of 70 rows. Between them: head dims 64 and 128; rows
// that end part way through the 64-row tiles (13, 67, 70, 130, 200); causal and not; a
// padding mask that hides every key of a row (causal_padded_*); dropout; several batches
// and heads.
INSTANTIATE_TEST_SUITE_P(
    Emulated, FusedAttentionEmulated,
    ::testing::Combine(::testing::Values(AttnCase{"causal_64", 2, 67, 2, 64, true, false, 0.0f},
                                         AttnCase{"bidirectional_padded_128", 1, 130, 2, 128, false, true, 0.0f},
                                         AttnCase{"causal_padded_dropout_64", 2, 130, 2, 64, true, true, 0.1f},
                                         AttnCase{"bidirectional_dropout_128", 1, 13, 3, 128, false, false, 0.2f},
                                         AttnCase{"causal_200_128", 1, 200, 1, 128, true, false, 0.0f},
                                         AttnCase{"causal_padded_dropout_70_128", 2, 70, 1, 128, true, true, 0.2f}),
                       ::testing::Values(DType::bf16, DType::f16)),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + "_" + dtype_name(std::get<1>(info.param));
    });

}  // namespace
}  // namespace mics
