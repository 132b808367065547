// The index-driven row sums of the CUDA embedding backward and scatter_add_rows
// (kernels/cuda/embedding_kernels.cuh), compiled for the host and run under
// tests/emulation/cuda_emulator.h with embedding.cu's grids, a host stable sort standing in
// for CUB's: in fp32 bit for bit equal to the CPU backend's serial loop (the scheme's
// promise), in bf16 within fp32 accumulation of the float64 sums; runs longer than a
// thread's loads in flight and crossing blocks' groups of sorted positions, partial column
// tiles, and rows outside the table (the error bit set, the other rows summed as without
// them). CudaEmbedding runs the same kernels on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/device_numerics.h"
#include "tests/cuda/host_dtype.h"
#include "tests/numerics/expect_close.h"

// The emulator stands in for the CUDA headers the kernels expect, so it comes first.
#include "tests/emulation/cuda_emulator.h"
#include "kernels/cuda/device_errors.h"
#include "kernels/cuda/embedding_kernels.cuh"

namespace mics {
namespace {

using device_test::random_vec;
using device_test::tol;

Backend& cpu() {
  static const std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

template <class E>
std::vector<E> to_dtype(const Vec& v) {
  std::vector<E> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = cuda::from_f<E>(static_cast<float>(v[i]));
  return out;
}
template <class E>
Vec to_vec(const std::vector<E>& v) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = cuda::to_f(v[i]);
  return out;
}

// embedding.cu's launch_index_add: dst[idx(r)] += src[r], idx(r) = rows[r], or r % seq
// without rows (the position table). A short grid for the strided kernel (3 blocks of 64
// threads), so that its threads stride.
template <class T>
void index_add(std::vector<T>& dst, int64_t dst_rows, const std::vector<T>& src, const std::vector<int32_t>* rows,
               int64_t seq, int64_t n, int64_t cols, int* error, int error_bit) {
  if (rows == nullptr) {
    cuda_emulator::launch(dim3{3}, 64, 0, cuda::strided_rows_add_kernel<T>, dst.data(), dst_rows, src.data(), n, seq,
                          cols, error, error_bit);
    return;
  }
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  std::vector<int32_t> values(static_cast<size_t>(n));
  cuda_emulator::launch(dim3{2}, 32, 0, cuda::index_keys_kernel<int32_t>, keys.data(), values.data(), rows->data(), n,
                        dst_rows);
  // Out-of-range rows are keyed dst_rows: within the sorted bits, after every valid key (a
  // key past them would be sorted by its low bits alone, among the valid runs).
  EXPECT_TRUE(std::all_of(keys.begin(), keys.end(), [&](uint32_t k) { return int64_t{k} <= dst_rows; }));
  // CUB's stable radix sort over the bits embedding.cu asks for (those of dst_rows): by
  // those bits of the key, equal ones in their input order.
  const int end_bit = cuda::index_key_bits(dst_rows);
  const uint32_t mask = end_bit >= 32 ? ~0u : (1u << end_bit) - 1;
  std::vector<size_t> order(keys.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return (keys[a] & mask) < (keys[b] & mask); });
  std::vector<uint32_t> sorted_keys(keys.size());
  std::vector<int32_t> sorted_values(keys.size());
  for (size_t i = 0; i < order.size(); ++i) sorted_keys[i] = keys[order[i]], sorted_values[i] = values[order[i]];
  const dim3 grid{static_cast<unsigned>((n + cuda::kRunStartsPerBlock - 1) / cuda::kRunStartsPerBlock),
                  static_cast<unsigned>((cols + cuda::kIndexAddThreads - 1) / cuda::kIndexAddThreads)};
  cuda_emulator::launch(grid, cuda::kIndexAddThreads, 0, cuda::index_add_runs_kernel<T>, dst.data(), dst_rows,
                        src.data(), static_cast<const uint32_t*>(sorted_keys.data()),
                        static_cast<const int32_t*>(sorted_values.data()), n, cols, error, error_bit);
}

// Bit for bit (== would take -0 for +0).
template <class E>
bool same_bits(const std::vector<E>& a, const std::vector<E>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(E)) == 0;
}

IntTensor host_ints(std::vector<int32_t>& v) { return IntTensor{v.data(), Shape{static_cast<int64_t>(v.size())}}; }

// The embedding backward (tokens, positions, token types) as the CUDA backend composes it,
// against the CPU backend: fp32 bit for bit, bf16 within fp32 sums of the float64 ones.
template <class T>
void check_embedding_backward(int64_t vocab, int64_t batch, int64_t seq, int64_t cols, bool one_id_fills,
                              uint64_t seed) {
  const DType t = std::is_same_v<T, float> ? DType::f32 : DType::bf16;
  SCOPED_TRACE(testing::Message() << dtype_name(t) << " V=" << vocab << " B=" << batch << " S=" << seq
                                  << " C=" << cols << (one_id_fills ? " one id filling the batch" : ""));
  const int64_t rows = batch * seq, types = 2;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1)), ty(0, 1);
  std::vector<int32_t> ids(static_cast<size_t>(rows)), type_ids(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    ids[static_cast<size_t>(r)] = one_id_fills && r % 5 != 0 ? 3 : id(rng);
    type_ids[static_cast<size_t>(r)] = ty(rng);
  }
  const Vec g = rounded(t, random_vec(rng, rows * cols));
  const Vec tok0 = rounded(t, random_vec(rng, vocab * cols)), pos0 = rounded(t, random_vec(rng, seq * cols)),
            type0 = rounded(t, random_vec(rng, types * cols));
  // The device's sums.
  std::vector<T> d_tok = to_dtype<T>(tok0), d_pos = to_dtype<T>(pos0), d_type = to_dtype<T>(type0),
                 d_g = to_dtype<T>(g);
  int error = 0;
  index_add(d_tok, vocab, d_g, &ids, seq, rows, cols, &error, cuda::kBadTokenId);
  index_add(d_pos, seq, d_g, static_cast<const std::vector<int32_t>*>(nullptr), seq, rows, cols, &error,
            cuda::kBadTokenId);
  index_add(d_type, types, d_g, &type_ids, seq, rows, cols, &error, cuda::kBadTypeId);
  EXPECT_EQ(error, 0);
  // The CPU backend's, in T (fp32: the same additions in the same order) and in float64.
  auto cpu_backward = [&](DType dt, Vec& tok, Vec& pos, Vec& type) {
    tok = tok0, pos = pos0, type = type0;
    if (dt == DType::f64) {
      Vec gg = g;
      cpu().embedding_backward(Tensor{tok.data(), {vocab, cols}}, Tensor{pos.data(), {seq, cols}},
                               Tensor{type.data(), {types, cols}}, Tensor{gg.data(), {rows, cols}}, host_ints(ids),
                               host_ints(type_ids), seq);
      return;
    }
    std::vector<float> ft(tok.begin(), tok.end()), fp(pos.begin(), pos.end()), fy(type.begin(), type.end()),
        fg(g.begin(), g.end());
    cpu().embedding_backward(Tensor{ft.data(), {vocab, cols}}, Tensor{fp.data(), {seq, cols}},
                             Tensor{fy.data(), {types, cols}}, Tensor{fg.data(), {rows, cols}}, host_ints(ids),
                             host_ints(type_ids), seq);
    tok.assign(ft.begin(), ft.end()), pos.assign(fp.begin(), fp.end()), type.assign(fy.begin(), fy.end());
  };
  if constexpr (std::is_same_v<T, float>) {
    Vec tok, pos, type;
    cpu_backward(DType::f32, tok, pos, type);
    EXPECT_TRUE(same_bits(to_vec(d_tok), tok)) << "d_tok differs from the CPU's fp32 bits";
    EXPECT_TRUE(same_bits(to_vec(d_pos), pos)) << "d_pos differs from the CPU's fp32 bits";
    EXPECT_TRUE(same_bits(to_vec(d_type), type)) << "d_type differs from the CPU's fp32 bits";
  }
  Vec tok, pos, type;
  cpu_backward(DType::f64, tok, pos, type);
  // Sums of up to `rows` terms of size 1 onto a prefill of size 1, in fp32 (as CudaEmbedding).
  const double sr = std::sqrt(double(rows));
  expect_close(to_vec(d_tok), tok, tol(t, 4 * sr, sr + 1), "d_tok (+=)");
  expect_close(to_vec(d_pos), pos, tol(t, 4 * sr, sr + 1), "d_pos (+=)");
  expect_close(to_vec(d_type), type, tol(t, 4 * sr, sr + 1), "d_type (+=)");
}

// Short runs, columns in a partial tile (37) and in two (300); one id filling 4 of 5 rows:
// a run of 480 rows next to runs of one or two, and two type runs of ~300.
TEST(EmulatedCudaIndexAdd, EmbeddingBackwardIsTheCpusSerialLoop) {
  check_embedding_backward<float>(29, 3, 13, 37, false, 61);
  check_embedding_backward<float>(29, 3, 13, 300, false, 62);
  check_embedding_backward<float>(50, 8, 75, 40, true, 63);
  check_embedding_backward<cuda::bf16>(29, 3, 13, 300, false, 64);
  check_embedding_backward<cuda::bf16>(50, 8, 75, 40, true, 65);
}

TEST(EmulatedCudaIndexAdd, SortsOnlyTheKeyBitsTheTableNeeds) {
  EXPECT_EQ(cuda::index_key_bits(0), 1);
  EXPECT_EQ(cuda::index_key_bits(1), 1);
  EXPECT_EQ(cuda::index_key_bits(2), 2);      // BERT's token types: keys 0, 1 and 2 (out of range)
  EXPECT_EQ(cuda::index_key_bits(30522), 15);  // BERT's vocabulary
  EXPECT_EQ(cuda::index_key_bits(32768), 16);  // the out-of-range key 32768 needs bit 15
  EXPECT_EQ(cuda::index_key_bits((int64_t{1} << 31) - 1), 31);
}

// Runs of every length from 1 to 70 (each end found by the outward search: lengths at,
// around and between its steps of 1, 2, 4 ... 64; loads in flight full, partial and
// both), their rows interleaved in the input: scatter_add_rows bit for bit with the CPU.
TEST(EmulatedCudaIndexAdd, RunsOfEveryLengthFindTheirEnds) {
  const int64_t table = 71, cols = 3;
  std::vector<int32_t> rows;
  for (int32_t length = 1; length < table; ++length)
    for (int32_t k = 0; k < length; ++k) rows.push_back(length);
  std::mt19937_64 rng(73);
  std::shuffle(rows.begin(), rows.end(), rng);
  const int64_t n = static_cast<int64_t>(rows.size());
  Vec w = random_vec(rng, n * cols), d0 = random_vec(rng, table * cols);
  // Row 5 and its sources all -0: their sum stays -0 only if nothing else is added.
  for (int64_t c = 0; c < cols; ++c) d0[5 * cols + c] = -0.0;
  for (int64_t r = 0; r < n; ++r)
    if (rows[static_cast<size_t>(r)] == 5)
      for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = -0.0;
  std::vector<float> d = to_dtype<float>(d0), src = to_dtype<float>(w), expected = to_dtype<float>(d0);
  int error = 0;
  index_add(d, table, src, &rows, 1, n, cols, &error, cuda::kBadScatterRow);
  EXPECT_EQ(error, 0);
  EXPECT_TRUE(std::signbit(d[5 * cols])) << "-0 sum became +0";
  cpu().scatter_add_rows(Tensor{expected.data(), {table, cols}}, Tensor{src.data(), {n, cols}}, host_ints(rows));
  EXPECT_TRUE(same_bits(d, expected)) << "differs from the CPU's fp32 bits";
}

// Rows outside the table (negative, and past it) set the error bit and are skipped: the
// table gets the sums of the other rows, in the CPU's order.
TEST(EmulatedCudaIndexAdd, RowsOutsideTheTableSetTheErrorBit) {
  const int64_t table = 11, n = 70, cols = 19;
  std::mt19937_64 rng(67);
  std::vector<int32_t> rows(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(table - 1));
  for (auto& r : rows) r = pick(rng);
  rows[4] = -1, rows[20] = static_cast<int32_t>(table), rows[21] = -7, rows[69] = 1 << 30;
  const Vec w = random_vec(rng, n * cols), d0 = random_vec(rng, table * cols);
  std::vector<float> d = to_dtype<float>(d0), src = to_dtype<float>(w);
  int error = 0;
  index_add(d, table, src, &rows, 1, n, cols, &error, cuda::kBadScatterRow);
  EXPECT_EQ(error, cuda::kBadScatterRow);
  std::vector<int32_t> valid;
  std::vector<float> valid_src, expected = to_dtype<float>(d0);
  for (int64_t r = 0; r < n; ++r)
    if (rows[static_cast<size_t>(r)] >= 0 && rows[static_cast<size_t>(r)] < table) {
      valid.push_back(rows[static_cast<size_t>(r)]);
      valid_src.insert(valid_src.end(), src.begin() + r * cols, src.begin() + (r + 1) * cols);
    }
  cpu().scatter_add_rows(Tensor{expected.data(), {table, cols}},
                         Tensor{valid_src.data(), {static_cast<int64_t>(valid.size()), cols}}, host_ints(valid));
  EXPECT_TRUE(same_bits(d, expected)) << "the valid rows' sums differ from the CPU's fp32 bits";

  // A position table shorter than the sequence: the rows past it set the bit.
  std::vector<float> pos(static_cast<size_t>(5 * cols), 0.0f);
  error = 0;
  index_add(pos, 5, src, static_cast<const std::vector<int32_t>*>(nullptr), 7, n, cols, &error, cuda::kBadTokenId);
  EXPECT_EQ(error, cuda::kBadTokenId);
}

}  // namespace
}  // namespace mics
