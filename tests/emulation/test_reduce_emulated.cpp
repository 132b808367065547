// The CUDA whole-tensor reductions (kernels/cuda/reduce_kernels.cuh: sum, sum of squares,
// the count of NaN/Inf entries), compiled for the host and run under
// tests/emulation/cuda_emulator.h with reduce.cu's grid: against a float64 sum within the
// bound of double accumulation, on the 16-byte path and the element-wise one (a misaligned
// start), with tails of every length and with grids short enough that threads stride. The
// gradient norm and the fp16 overflow check run these every step;
// tests/cuda/test_cuda_ops.cpp CudaElementwise.SumSumSquaresCountNonfinite runs the same
// kernels on a GPU. The partials array is followed by a guard that
// must stay untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

// The emulator stands in for the CUDA headers the kernels expect, so it comes first.
#include "tests/emulation/cuda_emulator.h"
#include "tests/emulation/guard_bytes.h"
#include "kernels/cuda/reduce_geometry.h"
#include "kernels/cuda/reduce_kernels.cuh"

namespace mics {
namespace {

using emulation::guard_value;
using emulation::same_bits;

// reduce.cu's launch geometry (reduce_geometry.h): blocks of 256 threads.
constexpr int kThreads = 256;
constexpr int kPartials = cuda::kReducePartials;
constexpr size_t kGuard = 16;

unsigned partial_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kPartials ? blocks : kPartials);
}

// (length, offset into a 16-byte aligned buffer): offset 0 takes the 16-byte path, 1 the
// element-wise one (as reduce.cu chooses). Tails of 1..7 after whole packs, fewer elements
// than threads, and one block's worth, both ways; with `full_grids`, also past 1024 blocks x
// 256 threads, where each thread strides (over packs and then the tail on the 16-byte path:
// 2 x 1024 x 256 x 8 + 5). A full grid takes the emulator ~1.5 s, so only one type runs them.
std::vector<std::pair<int64_t, size_t>> cases(bool full_grids) {
  std::vector<std::pair<int64_t, size_t>> out;
  for (int64_t n : {1, 7, 8, 9, 15, 37, 255, 2051})
    for (size_t offset : {0, 1}) out.emplace_back(n, offset);
  if (full_grids) out.insert(out.end(), {{2 * 1024 * 256 * 8 + 5, 0}, {300001, 1}});
  return out;
}

// The values of E at `offset` entries into a 16-byte aligned buffer.
template <class E>
struct Input {
  std::vector<uint4> storage;
  E* data;
  Input(const std::vector<float>& values, size_t offset) {
    storage.resize((values.size() + offset) * sizeof(E) / sizeof(uint4) + 1);
    data = reinterpret_cast<E*>(storage.data()) + offset;
    for (size_t i = 0; i < values.size(); ++i) data[i] = cuda::from_f<E>(values[i]);
  }
};

// The partials (one per block, then the guard) folded by one block, as reduce.cu does.
template <class A, class Launch>
A reduce(unsigned blocks, Launch&& launch_partials) {
  std::vector<A> partials(kPartials + kGuard, guard_value<A>());
  launch_partials(partials.data());
  for (size_t i = blocks; i < partials.size(); ++i)
    if (!same_bits(partials[i], guard_value<A>())) {
      ADD_FAILURE() << "partial " << i << " written, past the grid's " << blocks;
      break;
    }
  A result = guard_value<A>();
  cuda_emulator::launch(dim3{1}, kPartials, 0, cuda::fold_partials_kernel<A>, static_cast<const A*>(partials.data()),
                        static_cast<int>(blocks), &result);
  return result;
}

template <bool kVector, class E>
double device_sum(const E* x, int64_t n, bool squares) {
  const unsigned blocks = partial_blocks(n);
  return reduce<double>(blocks, [&](double* partials) {
    cuda_emulator::launch(dim3{blocks}, kThreads, 0, cuda::sum_partials_kernel<kVector, E>, x, n, squares, partials);
  });
}

template <bool kVector, class E>
unsigned long long device_count_nonfinite(const E* x, int64_t n) {
  const unsigned blocks = partial_blocks(n);
  return reduce<unsigned long long>(blocks, [&](unsigned long long* partials) {
    cuda_emulator::launch(dim3{blocks}, kThreads, 0, cuda::nonfinite_partials_kernel<kVector, E>, x, n, partials);
  });
}

template <class E>
void check_sums(const char* type, bool full_grids) {
  for (auto [n, offset] : cases(full_grids)) {
    SCOPED_TRACE(std::string(type) + " n=" + std::to_string(n) + (offset == 0 ? " 16-byte" : " element-wise"));
    std::mt19937_64 rng(static_cast<uint64_t>(n));
    std::uniform_real_distribution<float> dist(-2.0f, 1.0f);  // a nonzero mean: the sum is not ~0
    std::vector<float> values(static_cast<size_t>(n));
    for (float& v : values) v = dist(rng);
    const Input<E> in(values, offset);
    // The reference over the values as stored (rounded to E), in float64; the device
    // accumulates in double: n - 1 additions, each within 2^-53 of the running sum, so the
    // error stays below n 2^-53 times the sum of magnitudes.
    double sum = 0, sum_abs = 0, squares = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = cuda::to_f(in.data[i]);
      sum += v, sum_abs += std::abs(v), squares += v * v;
    }
    const double bound = static_cast<double>(n) * 0x1p-53;
    const double got_sum = offset == 0 ? device_sum<true>(in.data, n, false) : device_sum<false>(in.data, n, false);
    const double got_squares = offset == 0 ? device_sum<true>(in.data, n, true) : device_sum<false>(in.data, n, true);
    EXPECT_LE(std::abs(got_sum - sum), bound * sum_abs) << "sum " << got_sum << " vs " << sum;
    EXPECT_LE(std::abs(got_squares - squares), bound * squares) << "sum of squares " << got_squares << " vs " << squares;
    // A fixed grid and a fixed order: the same bits again.
    if (n > 2051) continue;
    const double again = offset == 0 ? device_sum<true>(in.data, n, true) : device_sum<false>(in.data, n, true);
    EXPECT_TRUE(same_bits(again, got_squares)) << "a second run gave another sum of squares";
  }
}

template <class E>
void check_nonfinite(const char* type, bool full_grids) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (auto [n, offset] : cases(full_grids)) {
    SCOPED_TRACE(std::string(type) + " n=" + std::to_string(n) + (offset == 0 ? " 16-byte" : " element-wise"));
    // Every other entry the type's largest finite value, of either sign: none may count.
    const float big = std::is_same_v<E, float> ? std::numeric_limits<float>::max()
                      : std::is_same_v<E, cuda::bf16> ? 0x1.fep127f
                                                      : 65504.0f;
    std::vector<float> values(static_cast<size_t>(n));
    for (size_t i = 0; i < values.size(); ++i) values[i] = i % 2 == 0 ? big : -big;
    // The first and last entries (a pack's start, the tail's end), and a few in between.
    std::vector<size_t> planted = {0, static_cast<size_t>(n - 1), static_cast<size_t>(n / 2),
                                   static_cast<size_t>(n / 3), static_cast<size_t>((n * 7) / 8)};
    std::sort(planted.begin(), planted.end());
    planted.erase(std::unique(planted.begin(), planted.end()), planted.end());
    for (size_t k = 0; k < planted.size(); ++k) values[planted[k]] = k % 3 == 0 ? nan : k % 3 == 1 ? -inf : inf;
    const Input<E> in(values, offset);
    const unsigned long long got =
        offset == 0 ? device_count_nonfinite<true>(in.data, n) : device_count_nonfinite<false>(in.data, n);
    EXPECT_EQ(got, planted.size());
  }
}

// Full grids for the gradient norm's usual type (bf16) and the overflow check's (fp16).
TEST(EmulatedCudaReduce, Fp32SumsWithinDoubleAccumulation) { check_sums<float>("fp32", false); }
TEST(EmulatedCudaReduce, Bf16SumsWithinDoubleAccumulation) { check_sums<cuda::bf16>("bf16", true); }
TEST(EmulatedCudaReduce, Fp16SumsWithinDoubleAccumulation) { check_sums<cuda::f16>("fp16", false); }
TEST(EmulatedCudaReduce, Fp32CountsEveryNonFiniteEntry) { check_nonfinite<float>("fp32", false); }
TEST(EmulatedCudaReduce, Bf16CountsEveryNonFiniteEntry) { check_nonfinite<cuda::bf16>("bf16", false); }
TEST(EmulatedCudaReduce, Fp16CountsEveryNonFiniteEntry) { check_nonfinite<cuda::f16>("fp16", true); }

// A sum of squares left on the device (reduce.cu's queue_device_sum: the gradient norm,
// layer by layer): its grid of one block per kQueuedSumBlockElements, and the fold of more
// partials than the folding block has threads (each thread adds several, in order).
template <bool kVector, class E>
double queued_sum_squares(const E* x, int64_t n) {
  const int64_t wanted = (n + cuda::kQueuedSumBlockElements - 1) / cuda::kQueuedSumBlockElements;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(wanted, cuda::kQueuedPartials));
  std::vector<double> partials(blocks + kGuard, guard_value<double>());
  if (blocks > 0)
    cuda_emulator::launch(dim3{blocks}, kThreads, 0, cuda::sum_partials_kernel<kVector, E>, x, n, true,
                          partials.data());
  for (size_t i = blocks; i < partials.size(); ++i)
    if (!same_bits(partials[i], guard_value<double>())) {
      ADD_FAILURE() << "partial " << i << " written, past the grid's " << blocks;
      break;
    }
  double result = guard_value<double>();
  cuda_emulator::launch(dim3{1}, kPartials, 0, cuda::fold_partials_kernel<double>,
                        static_cast<const double*>(partials.data()), static_cast<int>(blocks), &result);
  return result;
}

TEST(EmulatedCudaReduce, QueuedSumOfSquaresFoldsMorePartialsThanThreads) {
  // 1100 blocks: threads 0..75 of the fold add two partials each. Also an empty tensor (no
  // partials: 0), one partial, a tail past whole blocks, and the element-wise path.
  for (auto [n, offset] : std::vector<std::pair<int64_t, size_t>>{
           {0, 0}, {5, 0}, {8192, 0}, {8193, 1}, {3 * 8192 + 7, 0}, {1100 * 8192 - 3, 0}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + (offset == 0 ? " 16-byte" : " element-wise"));
    std::mt19937_64 rng(static_cast<uint64_t>(n) + 1);
    std::uniform_real_distribution<float> dist(-2.0f, 1.0f);
    std::vector<float> values(static_cast<size_t>(n));
    for (float& v : values) v = dist(rng);
    const Input<cuda::bf16> in(values, offset);
    double squares = 0;
    for (int64_t i = 0; i < n; ++i) squares += static_cast<double>(cuda::to_f(in.data[i])) * cuda::to_f(in.data[i]);
    const double got = offset == 0 ? queued_sum_squares<true>(in.data, n) : queued_sum_squares<false>(in.data, n);
    EXPECT_LE(std::abs(got - squares), static_cast<double>(n) * 0x1p-53 * squares) << got << " vs " << squares;
    if (n == 0) EXPECT_TRUE(same_bits(got, 0.0));
  }
}

}  // namespace
}  // namespace mics
