#pragma once
// Fused (flash-style) attention for bf16/fp16 and head dimensions 64 and 128: the scores
// never leave the chip. Tensor-core products through mma.sync.m16n8k16 (fp32 accumulation),
// each warp owning 16 rows; the online softmax runs on the accumulator fragments.
//
// Forward (one CTA per 64 queries of one (batch, head)): for each block of 64 keys, S = Q K^T
// (scaled, masked), the running row max and sum updated, O rescaled and O += P' V with P'
// the (dropped) unnormalised probabilities as bf16/fp16 fragments. At the end O /= sum and
// lse = max + log(sum) (fp32) is kept for the backward.
//
// Backward, deterministic (no atomics): delta_i = dO_i . O_i first; then one kernel per
// block of 64 keys accumulates dK and dV over the query blocks, and one per block of 64
// queries accumulates dQ over the key blocks, each recomputing P = exp(S - lse) and
// dP' = dO V^T (7 products where the materialised path runs 4, in exchange for no T x T
// traffic). Dropout uses the materialised path's mask, element for element.
//
// mma.sync fragment layout (PTX ISA, m16n8k16, .row.col), g = lane / 4, t = lane % 4:
//   A (16 x 16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8):  c0, c1 = (g, 2t), (g, 2t+1); c2, c3 = (g+8, 2t), (g+8, 2t+1)
// Two C tiles side by side (16 x 16) hold exactly the elements of one A fragment, which is
// how probabilities become the next product's A operand without leaving registers.
//
// The kernels alone: attention_fused.cu compiles them with nvcc and launches them, and
// tests/emulation/test_fused_attention_emulated.cpp compiles them for the host under
// tests/emulation/cuda_emulator.h, to check them against float64 where there is no GPU.
// So this file includes no CUDA header; whoever includes it provides, in mics::cuda, the
// element types bf16 and f16 with to_f and from_f (device_common.cuh), and what only the
// hardware has: mma16816 (one mma.sync.m16n8k16) and shared_bytes (the block's dynamic
// shared memory, an extern __shared__ array).
#include <cstdint>

#include "kernels/counter_hash.h"

namespace mics::cuda {
namespace {

constexpr int kTile = 64;       // rows per CTA and columns per inner step
constexpr int kWarpsPerCta = 4;  // 16 rows each
constexpr int kCtaThreads = 32 * kWarpsPerCta;
constexpr int kPad = 8;         // elements of padding per shared row: conflict-free fragment loads

// Two values as one 32-bit register of T (the first in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T l = from_f<T>(lo), h = from_f<T>(hi);
  const uint16_t lb = *reinterpret_cast<const uint16_t*>(&l), hb = *reinterpret_cast<const uint16_t*>(&h);
  return static_cast<uint32_t>(lb) | (static_cast<uint32_t>(hb) << 16);
}

template <class T>
__device__ __forceinline__ uint32_t load2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// A fragments of rows [row0, row0 + 16) of a row-major global matrix (row stride ld),
// columns [16 kc, 16 kc + 16); rows at or past `rows` read as zeros.
template <class T, int kChunks>
__device__ __forceinline__ void load_a_global(uint32_t (&a)[kChunks][4], const T* base, int64_t ld, int row0,
                                              int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r_lo = row0 + g, r_hi = row0 + g + 8;
#pragma unroll
  for (int kc = 0; kc < kChunks; ++kc) {
    const int col = kc * 16 + 2 * t;
    a[kc][0] = r_lo < rows ? load2(base + r_lo * ld + col) : 0u;
    a[kc][1] = r_hi < rows ? load2(base + r_hi * ld + col) : 0u;
    a[kc][2] = r_lo < rows ? load2(base + r_lo * ld + col + 8) : 0u;
    a[kc][3] = r_hi < rows ? load2(base + r_hi * ld + col + 8) : 0u;
  }
}

// The same from a shared tile [16 rows starting at row0][D + kPad].
template <class T, int kChunks, int kStride>
__device__ __forceinline__ void load_a_shared(uint32_t (&a)[4], const T* tile, int row0, int kc) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* lo = tile + (row0 + g) * kStride + kc * 16 + 2 * t;
  const T* hi = lo + 8 * kStride;
  a[0] = load2(lo);
  a[1] = load2(hi);
  a[2] = load2(lo + 8);
  a[3] = load2(hi + 8);
}

// C += A B with B^T stored row-major in shared memory: row n of `bt` is column n of B
// (stride kStride), k running along the row. n-tile nt covers B columns [8 nt, 8 nt + 8).
template <class T, int kStride>
__device__ __forceinline__ void mma_bt(float (&c)[4], const uint32_t (&a)[4], const T* bt, int nt, int kc) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* p = bt + (nt * 8 + g) * kStride + kc * 16 + 2 * t;
  mma16816(c, a, load2(p), load2(p + 8), T{});
}

// Rows [row0, row0 + kTile) of a [rows x D] global matrix (row stride ld) into a shared tile
// stored as is ([kTile][D + kPad]) and, when `transposed` is non-null, transposed
// ([D][kTile + kPad]). Rows past `rows` are zeros.
// A warp takes 16 rows x 2 neighbouring 16-byte vectors (each row's 32 bytes: one whole
// sector of global memory). In the transposed tile, element i of every row's vector c8 lands
// in bank (4 i + r / 2) mod 32 whatever c8 (the row pitch, kTile + kPad elements, is 4 banks
// past a multiple of 32, and c8 steps by 8 rows): 16 rows spread a warp's 32 stores over 8
// banks (2 ways); a warp across one row's vectors, 4 or 2 rows, put them in 1 or 2 banks (8
// or 16 ways).
template <class T, int D>
__device__ __forceinline__ void load_tile(T* tile, T* transposed, const T* base, int64_t ld, int row0, int rows) {
  static_assert(D % 16 == 0 && kCtaThreads % 32 == 0 && kTile % 16 == 0, "a warp covers 16 rows x 2 vectors");
  constexpr int kVectors = kTile * D / 8, kPairsPerRow = D / 16;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for (int v = threadIdx.x; v < kVectors; v += kCtaThreads) {
    const int w = v / 32;  // which 16 rows (w / kPairsPerRow) and which pair of vectors (w % kPairsPerRow)
    const int r = (w / kPairsPerRow) * 16 + lane / 2, c8 = ((w % kPairsPerRow) * 2 + lane % 2) * 8;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < rows) x = *reinterpret_cast<const uint4*>(base + (row0 + r) * ld + c8);
    if (tile != nullptr) *reinterpret_cast<uint4*>(tile + r * (D + kPad) + c8) = x;
    if (transposed != nullptr) {
      const T* e = reinterpret_cast<const T*>(&x);
#pragma unroll
      for (int i = 0; i < 8; ++i) transposed[(c8 + i) * (kTile + kPad) + r] = e[i];
    }
  }
}

struct FusedArgs {
  int seq, heads;
  bool causal;
  float scale;  // 1 / sqrt(D)
  float drop_prob, keep_scale;
  uint64_t drop_seed;
  const int32_t* key_keep;  // [B*T] or null
};

__device__ __forceinline__ bool shown(const FusedArgs& f, int b, int i, int j) {
  return i < f.seq && j < f.seq && !(f.causal && j > i) &&
         !(f.key_keep != nullptr && f.key_keep[static_cast<int64_t>(b) * f.seq + j] == 0);
}

// The dropout multiplier of probability (bh, i, j): 0 or 1/(1-p) (1 without dropout).
__device__ __forceinline__ float drop_mult(const FusedArgs& f, int bh, int i, int j) {
  if (f.drop_prob <= 0.0f) return 1.0f;
  const uint64_t index = (static_cast<uint64_t>(bh) * f.seq + i) * f.seq + j;
  return dropout_keep(f.drop_seed, index, f.drop_prob) ? f.keep_scale : 0.0f;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The A fragment (16 rows x 16 columns kc) made of two C tiles side by side (columns
// 16 kc .. 16 kc + 15 of a 16 x 64 accumulator block), rounded to T.
template <class T>
__device__ __forceinline__ void a_from_c(uint32_t (&a)[4], const float (&c)[8][4], int kc) {
  a[0] = pack2<T>(c[2 * kc][0], c[2 * kc][1]);
  a[1] = pack2<T>(c[2 * kc][2], c[2 * kc][3]);
  a[2] = pack2<T>(c[2 * kc + 1][0], c[2 * kc + 1][1]);
  a[3] = pack2<T>(c[2 * kc + 1][2], c[2 * kc + 1][3]);
}

// The (batch, head) pair of blockIdx.y: row 0 of its q (k, v at + C, + 2C; row stride ld)
// and of its d_out rows (stride C).
template <class T, int D>
struct HeadView {
  int bh, b, h, C;
  int64_t ld;
  const T* q;
  const T* d_out;
  __device__ HeadView(const T* qkv, const T* dout, const FusedArgs& f)
      : bh(blockIdx.y), b(bh / f.heads), h(bh % f.heads), C(f.heads * D), ld(3 * static_cast<int64_t>(C)) {
    q = qkv + static_cast<int64_t>(b) * f.seq * ld + h * D;
    d_out = dout != nullptr ? dout + static_cast<int64_t>(b) * f.seq * C + h * D : nullptr;
  }
};

// Row `row` of a [rows x D] accumulator block (acc[nt][2r], acc[nt][2r+1] at columns
// 8 nt + 2t, + 1) rounded to T into dst[0 .. D).
template <class T, int kOutTiles>
__device__ __forceinline__ void store_row(T* dst, const float (&acc)[kOutTiles][4], int r, float scale = 1.0f) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < kOutTiles; ++nt)
    *reinterpret_cast<uint32_t*>(dst + nt * 8 + 2 * t) = pack2<T>(acc[nt][2 * r] * scale, acc[nt][2 * r + 1] * scale);
}

// ---------------------------------------------------------------- forward

template <class T, int D>
__global__ void __launch_bounds__(kCtaThreads)
    fused_forward_kernel(T* out, float* lse, const T* qkv, FusedArgs f) {
  constexpr int kChunks = D / 16, kOutTiles = D / 8;
  __shared__ __align__(16) T k_tile[kTile * (D + kPad)];
  __shared__ __align__(16) T v_t[D * (kTile + kPad)];
  const HeadView<T, D> x(qkv, nullptr, f);
  const int bh = x.bh, b = x.b, C = x.C;
  const int64_t ld = x.ld;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kTile + warp * 16;
  const int rows[2] = {row0 + g, row0 + g + 8};

  uint32_t qf[kChunks][4];
  load_a_global<T, kChunks>(qf, x.q, ld, row0, f.seq);
  float o[kOutTiles][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  const int key_blocks = (f.seq + kTile - 1) / kTile;
  const int last = f.causal ? min(key_blocks, static_cast<int>(blockIdx.x) + 1) : key_blocks;
  for (int kb = 0; kb < last; ++kb) {
    __syncthreads();  // the previous tiles are consumed
    load_tile<T, D>(k_tile, nullptr, x.q + C, ld, kb * kTile, f.seq);
    load_tile<T, D>(nullptr, v_t, x.q + 2 * C, ld, kb * kTile, f.seq);
    __syncthreads();

    float s[8][4] = {};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int kc = 0; kc < kChunks; ++kc) mma_bt<T, D + kPad>(s[nt], qf[kc], k_tile, nt, kc);

    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = kb * kTile + nt * 8 + 2 * t + (e & 1);
        const int half = e >> 1;
        s[nt][e] = shown(f, b, rows[half], j) ? s[nt][e] * f.scale : -INFINITY;
        mx[half] = fmaxf(mx[half], s[nt][e]);
      }
    float alpha[2], base[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(mx[r]));
      // Nothing shown yet in this row: keep zeros (exp(-inf) = 0), no NaN from -inf - -inf.
      alpha[r] = m_new == -INFINITY ? 1.0f : __expf(m[r] - m_new);
      base[r] = m_new == -INFINITY ? 0.0f : m_new;
      m[r] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = e >> 1;
        const float p = __expf(s[nt][e] - base[half]);
        sum[half] += p;
        const int j = kb * kTile + nt * 8 + 2 * t + (e & 1);
        s[nt][e] = p == 0.0f ? 0.0f : p * drop_mult(f, bh, rows[half], j);  // P' (unnormalised)
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + quad_sum(sum[r]);
#pragma unroll
    for (int nt = 0; nt < kOutTiles; ++nt) {
      o[nt][0] *= alpha[0], o[nt][1] *= alpha[0];
      o[nt][2] *= alpha[1], o[nt][3] *= alpha[1];
    }
#pragma unroll
    for (int kc = 0; kc < kTile / 16; ++kc) {
      uint32_t pa[4];
      a_from_c<T>(pa, s, kc);
#pragma unroll
      for (int nt = 0; nt < kOutTiles; ++nt) mma_bt<T, kTile + kPad>(o[nt], pa, v_t, nt, kc);
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= f.seq) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // no key shown: output 0
    store_row<T, kOutTiles>(out + (static_cast<int64_t>(b) * f.seq + rows[r]) * C + x.h * D, o, r, inv);
    if (t == 0) lse[static_cast<int64_t>(bh) * f.seq + rows[r]] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
  }
}

// ---------------------------------------------------------------- backward

// delta[bh*T + i] = sum_d dO[b, i, hD + d] O[b, i, hD + d], in fp32.
template <class T>
__global__ void fused_delta_kernel(float* delta, const T* d_out, const T* out, int64_t rows, int seq, int heads,
                                   int head_dim) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bh = r / seq, i = r % seq, b = bh / heads, h = bh % heads;
    const int64_t at = (b * seq + i) * heads * head_dim + h * head_dim;
    float acc = 0.0f;
    for (int d = 0; d < head_dim; ++d) acc += to_f(d_out[at + d]) * to_f(out[at + d]);
    delta[r] = acc;
  }
}

// Shared memory of the dK/dV kernel: this CTA's K and V rows, the query block's Q and dO
// rows as they are and transposed, its lse and delta.
template <int D>
constexpr size_t dkdv_shared_elements() {
  return 4 * static_cast<size_t>(kTile) * (D + kPad) + 2 * static_cast<size_t>(D) * (kTile + kPad);
}

template <class T, int D>
__global__ void __launch_bounds__(kCtaThreads)
    fused_backward_dkdv_kernel(T* d_qkv, const T* d_out, const T* qkv, const float* lse, const float* delta,
                               FusedArgs f) {
  constexpr int kChunks = D / 16, kOutTiles = D / 8, kRow = D + kPad, kCol = kTile + kPad;
  T* k_tile = reinterpret_cast<T*>(shared_bytes);
  T* v_tile = k_tile + kTile * kRow;
  T* q_tile = v_tile + kTile * kRow;
  T* do_tile = q_tile + kTile * kRow;
  T* q_t = do_tile + kTile * kRow;
  T* do_t = q_t + D * kCol;
  __shared__ float lse_s[kTile], delta_s[kTile];

  const HeadView<T, D> x(qkv, d_out, f);
  const int bh = x.bh, b = x.b, C = x.C;
  const int64_t ld = x.ld;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, warp = threadIdx.x >> 5;
  const int key0 = blockIdx.x * kTile;
  const int keys[2] = {key0 + warp * 16 + g, key0 + warp * 16 + g + 8};

  load_tile<T, D>(k_tile, nullptr, x.q + C, ld, key0, f.seq);
  load_tile<T, D>(v_tile, nullptr, x.q + 2 * C, ld, key0, f.seq);
  float dk[kOutTiles][4] = {}, dv[kOutTiles][4] = {};

  const int query_blocks = (f.seq + kTile - 1) / kTile;
  for (int qb = f.causal ? static_cast<int>(blockIdx.x) : 0; qb < query_blocks; ++qb) {
    __syncthreads();
    load_tile<T, D>(q_tile, q_t, x.q, ld, qb * kTile, f.seq);
    load_tile<T, D>(do_tile, do_t, x.d_out, C, qb * kTile, f.seq);
    for (int r = threadIdx.x; r < kTile; r += kCtaThreads) {
      const int i = qb * kTile + r;
      lse_s[r] = i < f.seq ? lse[static_cast<int64_t>(bh) * f.seq + i] : 0.0f;
      delta_s[r] = i < f.seq ? delta[static_cast<int64_t>(bh) * f.seq + i] : 0.0f;
    }
    __syncthreads();

    // S^T = K Q^T and dP'^T = V dO^T for this warp's 16 keys and the block's 64 queries.
    float st[8][4] = {}, dpt[8][4] = {};
#pragma unroll
    for (int kc = 0; kc < kChunks; ++kc) {
      uint32_t ka[4], va[4];
      load_a_shared<T, kChunks, kRow>(ka, k_tile, warp * 16, kc);
      load_a_shared<T, kChunks, kRow>(va, v_tile, warp * 16, kc);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        mma_bt<T, kRow>(st[nt], ka, q_tile, nt, kc);
        mma_bt<T, kRow>(dpt[nt], va, do_tile, nt, kc);
      }
    }
    // P'^T (into st) and dS^T (into dpt).
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int local = nt * 8 + 2 * t + (e & 1), i = qb * kTile + local, j = keys[e >> 1];
        const float p = shown(f, b, i, j) ? __expf(st[nt][e] * f.scale - lse_s[local]) : 0.0f;
        const float mult = p == 0.0f ? 0.0f : drop_mult(f, bh, i, j);
        st[nt][e] = p * mult;
        dpt[nt][e] = p * (dpt[nt][e] * mult - delta_s[local]) * f.scale;
      }
    // dV += P'^T dO, dK += dS^T Q: the 64 queries are the reduction dimension.
#pragma unroll
    for (int kc = 0; kc < kTile / 16; ++kc) {
      uint32_t pa[4], sa[4];
      a_from_c<T>(pa, st, kc);
      a_from_c<T>(sa, dpt, kc);
#pragma unroll
      for (int nt = 0; nt < kOutTiles; ++nt) {
        mma_bt<T, kCol>(dv[nt], pa, do_t, nt, kc);
        mma_bt<T, kCol>(dk[nt], sa, q_t, nt, kc);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (keys[r] >= f.seq) continue;
    T* dst = d_qkv + (static_cast<int64_t>(b) * f.seq + keys[r]) * ld + x.h * D;
    store_row<T, kOutTiles>(dst + C, dk, r);
    store_row<T, kOutTiles>(dst + 2 * C, dv, r);
  }
}

// Shared memory of the dQ kernel: the key block's K and V rows, and K transposed.
template <int D>
constexpr size_t dq_shared_elements() {
  return 2 * static_cast<size_t>(kTile) * (D + kPad) + static_cast<size_t>(D) * (kTile + kPad);
}

template <class T, int D>
__global__ void __launch_bounds__(kCtaThreads)
    fused_backward_dq_kernel(T* d_qkv, const T* d_out, const T* qkv, const float* lse, const float* delta,
                             FusedArgs f) {
  constexpr int kChunks = D / 16, kOutTiles = D / 8, kRow = D + kPad, kCol = kTile + kPad;
  T* k_tile = reinterpret_cast<T*>(shared_bytes);
  T* v_tile = k_tile + kTile * kRow;
  T* k_t = v_tile + kTile * kRow;

  const HeadView<T, D> x(qkv, d_out, f);
  const int bh = x.bh, b = x.b, C = x.C;
  const int64_t ld = x.ld;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kTile + warp * 16;
  const int rows[2] = {row0 + g, row0 + g + 8};

  uint32_t qf[kChunks][4], df[kChunks][4];
  load_a_global<T, kChunks>(qf, x.q, ld, row0, f.seq);
  load_a_global<T, kChunks>(df, x.d_out, C, row0, f.seq);
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = rows[r] < f.seq;
    row_lse[r] = in ? lse[static_cast<int64_t>(bh) * f.seq + rows[r]] : 0.0f;
    row_delta[r] = in ? delta[static_cast<int64_t>(bh) * f.seq + rows[r]] : 0.0f;
  }
  float dq[kOutTiles][4] = {};

  const int key_blocks = (f.seq + kTile - 1) / kTile;
  const int last = f.causal ? min(key_blocks, static_cast<int>(blockIdx.x) + 1) : key_blocks;
  for (int kb = 0; kb < last; ++kb) {
    __syncthreads();
    load_tile<T, D>(k_tile, k_t, x.q + C, ld, kb * kTile, f.seq);
    load_tile<T, D>(v_tile, nullptr, x.q + 2 * C, ld, kb * kTile, f.seq);
    __syncthreads();

    float s[8][4] = {}, dp[8][4] = {};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int kc = 0; kc < kChunks; ++kc) {
        mma_bt<T, kRow>(s[nt], qf[kc], k_tile, nt, kc);
        mma_bt<T, kRow>(dp[nt], df[kc], v_tile, nt, kc);
      }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = e >> 1, i = rows[half], j = kb * kTile + nt * 8 + 2 * t + (e & 1);
        const float p = shown(f, b, i, j) ? __expf(s[nt][e] * f.scale - row_lse[half]) : 0.0f;
        const float mult = p == 0.0f ? 0.0f : drop_mult(f, bh, i, j);
        s[nt][e] = p * (dp[nt][e] * mult - row_delta[half]) * f.scale;  // dS
      }
#pragma unroll
    for (int kc = 0; kc < kTile / 16; ++kc) {
      uint32_t sa[4];
      a_from_c<T>(sa, s, kc);
#pragma unroll
      for (int nt = 0; nt < kOutTiles; ++nt) mma_bt<T, kCol>(dq[nt], sa, k_t, nt, kc);
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= f.seq) continue;
    store_row<T, kOutTiles>(d_qkv + (static_cast<int64_t>(b) * f.seq + rows[r]) * ld + x.h * D, dq, r);
  }
}

}  // namespace
}  // namespace mics::cuda
