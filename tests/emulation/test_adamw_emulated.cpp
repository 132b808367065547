// The CUDA AdamW kernels (kernels/cuda/adamw_kernels.cuh), compiled for the host and run
// under tests/emulation/cuda_emulator.h, against the CPU backend's AdamW: the same bits for
// every gradient type (fp32, or a model's own bf16/fp16 gradient, read in place with p = 1)
// and working-copy type, on the four-a-thread path and the element-wise one, with a grid
// short enough that threads stride. tests/cuda/test_cuda_ops.cpp CudaAdamW runs the same
// kernels on a GPU. Every array is followed by a guard that must stay untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/ops.h"

// The emulator stands in for the CUDA headers the kernels expect, so it comes first.
#include "tests/emulation/cuda_emulator.h"
#include "tests/emulation/guard_bytes.h"
#include "kernels/cuda/adamw_kernels.cuh"

namespace mics {
namespace {

Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

constexpr size_t kGuard = 64;
constexpr int kThreads = 256;

using emulation::guard_value;
using emulation::same_bits;

// n values of E, then the guard.
template <class E>
std::vector<E> with_guard(const std::vector<float>& values) {
  std::vector<E> out(values.size() + kGuard, guard_value<E>());
  for (size_t i = 0; i < values.size(); ++i) out[i] = cuda::from_f<E>(values[i]);
  return out;
}

// Compares the first n entries with `expected` bit for bit and checks the guard.
template <class E>
void expect_bits(const std::vector<E>& got, const std::vector<float>& expected, const char* what) {
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < expected.size(); ++i)
    if (!same_bits(got[i], cuda::from_f<E>(expected[i])) && wrong++ == 0) first = i;
  EXPECT_EQ(wrong, 0u) << what << ": " << wrong << " of " << expected.size() << " entries differ; first " << first
                       << ": " << cuda::to_f(got[first]) << " vs " << expected[first];
  for (size_t i = expected.size(); i < got.size(); ++i)
    if (!same_bits(got[i], guard_value<E>())) {
      ADD_FAILURE() << what << ": written past the end, at entry " << i;
      break;
    }
}

struct Run {
  bool vectorised;
  unsigned blocks;  // 0: enough for one element (or four) a thread; else fewer, so threads stride
};

template <class G, class C>
void check(bool with_copy, Run run, const AdamWSpec& spec, uint64_t seed) {
  const int64_t n = 4099;  // not a multiple of 4: the vector path's tail
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f), positive(0.0f, 0.01f);
  std::vector<float> p(n), g(n), m(n), v(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = uniform(rng);
    m[i] = spec.step == 1 ? 0.0f : 0.1f * uniform(rng);
    v[i] = spec.step == 1 ? 0.0f : positive(rng);
    g[i] = uniform(rng) * (i % 7 == 0 ? 1e-8f : 1.0f);  // some far below fp16's normal range
    if (i % 101 == 3) g[i] = 0.0f;
    g[i] = cuda::to_f(cuda::from_f<G>(g[i]));  // the gradient's exact value in G
  }
  // The CPU's update of the same values.
  std::vector<float> cp = p, cg = g, cm = m, cv = v;
  cpu().adamw(Tensor(cp.data(), DType::f32, {n}), Tensor(cg.data(), DType::f32, {n}),
              Tensor(cm.data(), DType::f32, {n}), Tensor(cv.data(), DType::f32, {n}), spec, Tensor{});

  auto dp = with_guard<float>(p), dm = with_guard<float>(m), dv = with_guard<float>(v);
  const auto dg = with_guard<G>(g);
  auto copy = with_guard<C>(std::vector<float>(n, 0.0f));
  C* copy_ptr = with_copy ? copy.data() : nullptr;
  const cuda::AdamWScalars k = cuda::adamw_scalars(spec);
  const int64_t units = run.vectorised ? n / 4 : n;
  const unsigned blocks = run.blocks > 0 ? run.blocks : static_cast<unsigned>((units + kThreads - 1) / kThreads);
  if (run.vectorised)
    cuda_emulator::launch(dim3{blocks}, kThreads, 0, cuda::adamw_vec_kernel<G, C>, dp.data(), dg.data(), dm.data(),
                          dv.data(), n, k, copy_ptr);
  else
    cuda_emulator::launch(dim3{blocks}, kThreads, 0, cuda::adamw_kernel<G, C>, dp.data(), dg.data(), dm.data(),
                          dv.data(), n, k, copy_ptr);
  expect_bits(dp, cp, "param");
  expect_bits(dm, cm, "m");
  expect_bits(dv, cv, "v");
  if (with_copy)
    expect_bits(copy, cp, "working copy");
  else
    expect_bits(copy, std::vector<float>(n, 0.0f), "no working copy: untouched");
}

template <class G>
void check_gradient_type(const char* name) {
  const AdamWSpec specs[] = {AdamWSpec{1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 1, 0.5f},
                             AdamWSpec{3e-3f, 0.9f, 0.95f, 1e-6f, 0.0f, 100, 2.0f}};
  uint64_t seed = 1;
  for (const AdamWSpec& spec : specs)
    for (Run run : {Run{true, 0}, Run{true, 2}, Run{false, 0}, Run{false, 3}}) {
      SCOPED_TRACE(testing::Message() << "gradient " << name << ", step " << spec.step
                                      << (run.vectorised ? ", four a thread" : ", one a thread")
                                      << (run.blocks ? ", short grid" : ""));
      check<G, float>(false, run, spec, seed++);
      check<G, cuda::bf16>(true, run, spec, seed++);
      check<G, cuda::f16>(true, run, spec, seed++);
      check<G, float>(true, run, spec, seed++);
    }
}

TEST(EmulatedCudaAdamW, Fp32GradientsGiveTheCpusBits) { check_gradient_type<float>("fp32"); }
TEST(EmulatedCudaAdamW, Bf16GradientsGiveTheCpusBits) { check_gradient_type<cuda::bf16>("bf16"); }
TEST(EmulatedCudaAdamW, Fp16GradientsGiveTheCpusBits) { check_gradient_type<cuda::f16>("fp16"); }

}  // namespace
}  // namespace mics
