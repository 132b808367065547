#pragma once
// Host-side launchers of the hand-written kernels (one .cu file per concern). Internal to
// kernels/cuda: the backend (cuda_backend.cpp, plain C++) checks arguments and calls these
// with raw device pointers; each launcher dispatches on dtype, launches, and checks the
// launch. Every launcher returns at once for empty work (a grid of 0 blocks is an error).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/adamw_scalars.h"
#include "kernels/cuda/column_reduce_geometry.h"
#include "kernels/cuda/device_errors.h"
#include "kernels/cuda/reduce_geometry.h"
#include "kernels/ops.h"

namespace mics::cuda {

// ---- elementwise.cu ----
void launch_cast(DType out_t, void* out, DType in_t, const void* in, int64_t n, cudaStream_t s);
void launch_add(DType out_t, void* out, DType a_t, const void* a, DType b_t, const void* b,
                int64_t n, cudaStream_t s);
void launch_scale(DType t, void* x, int64_t n, double alpha, cudaStream_t s);
void launch_gelu_forward(DType t, void* out, const void* in, int64_t n, GeluKind kind,
                         cudaStream_t s);
void launch_gelu_backward(DType t, void* d_in, const void* d_out, const void* in, int64_t n,
                          GeluKind kind, cudaStream_t s);
// out[i] = keep(seed, i) ? in[i] / (1 - prob) : 0, i the flat element index; in place allowed.
void launch_dropout(DType t, void* out, const void* in, int64_t n, float prob, uint64_t seed,
                    cudaStream_t s);
// out[m, n] = bias[n] broadcast over rows (the linear layer's bias without an epilogue).
void launch_broadcast_rows(DType t, void* out, const void* bias, int64_t rows, int64_t cols,
                           cudaStream_t s);

// ---- reduce.cu ----
// Deterministic reductions: a fixed grid (from n alone) writes per-block partials into
// `partials` (kReducePartials entries), one block folds them into `result` (device), and
// the value is copied to the host (the call synchronises the stream).
double device_sum(DType t, const void* x, int64_t n, bool squares, double* partials,
                  double* result, cudaStream_t s);
// The same sum queued on `s` with no read-back: *result (device) = the sum; `partials`
// holds kQueuedPartials (reduce_geometry.h: its grid of short-lived blocks).
void queue_device_sum(DType t, const void* x, int64_t n, bool squares, double* partials, double* result,
                      cudaStream_t s);
int64_t device_count_nonfinite(DType t, const void* x, int64_t n, unsigned long long* partials,
                               unsigned long long* result, cudaStream_t s);
// Column reductions (column_reduce.cuh) sum chunks of rows into fp32 partials, then fold
// each column's partials in chunk order: deterministic. The caller provides the partials:
// column_partials_floats(rows, cols, sums wanted) floats (column_reduce_geometry.h).
// sums[c] += (or, without accumulate, =) the sum over rows r of x[r, c], in fp32.
void launch_column_sums(DType t, void* sums, const void* x, int64_t rows, int64_t cols, bool accumulate,
                        float* partials, cudaStream_t s);

// ---- layernorm.cu ----  (stats_t: dtype of mean/rstd, the op's dtype or f32)
void launch_layernorm_forward(DType t, DType stats_t, void* out, void* mean, void* rstd,
                              const void* in, const void* gamma, const void* beta, int64_t rows,
                              int64_t cols, float eps, cudaStream_t s);
// sum = a + b (rounded to t), out = LayerNorm(sum); sum may alias a or b.
void launch_add_layernorm_forward(DType t, DType stats_t, void* sum, void* out, void* mean, void* rstd,
                                  const void* a, const void* b, const void* gamma, const void* beta,
                                  int64_t rows, int64_t cols, float eps, cudaStream_t s);
void launch_layernorm_backward(DType t, DType stats_t, void* d_in, void* d_gamma, void* d_beta,
                               const void* d_out, const void* in, const void* gamma,
                               const void* mean, const void* rstd, int64_t rows, int64_t cols,
                               bool accumulate_d_in, bool accumulate_params, float* partials, cudaStream_t s);

// ---- attention.cu ----
// In place on scores[B*H*T, T] (already scaled): masked softmax per row (causal: key j > i
// hidden; key_keep[b*T + j] == 0 hidden; a row with every key hidden becomes zeros). With
// drop_prob > 0 the dropped-and-rescaled probabilities are written instead (index: the
// flat element index of probs[B,H,T,T], the CPU's prob_index).
void launch_attention_softmax(DType t, void* scores, const int32_t* key_keep, int64_t batch,
                              int64_t heads, int64_t seq, bool causal, float drop_prob,
                              uint64_t drop_seed, cudaStream_t s);
// In place on grad[B*H*T, T], holding dP' = dO V^T: dP = dropout mask (as above) applied,
// then dS = scale * P * (dP - sum_j P dP) with P = probs.
void launch_attention_softmax_backward(DType t, void* grad, const void* probs, int64_t rows,
                                       int64_t seq, float scale, float drop_prob,
                                       uint64_t drop_seed, cudaStream_t s);

// ---- attention_fused.cu ----  (bf16/fp16, head_dim 64 or 128, sm_80+; else ShapeError)
struct FusedAttentionShape {
  int64_t batch, seq, heads, head_dim;
  bool causal;
  float drop_prob;
  uint64_t drop_seed;
  const int32_t* key_keep;  // [B*T] or null
};
// out[B,T,C], lse[B,H,T] fp32 from qkv[B,T,3C] (Backend::attention_forward_fused).
void launch_attention_forward_fused(DType t, void* out, float* lse, const void* qkv, const FusedAttentionShape& a,
                                    cudaStream_t s);
// Shared memory per block the fused kernels need at this head dimension (bf16/fp16): the
// device's opt-in limit must reach it (sm_86/sm_89 offer 99 KiB, short of head dim 128).
size_t fused_attention_shared_bytes(int64_t head_dim);
// d_qkv[B,T,3C] (=); delta: [B*H*T] fp32 workspace.
void launch_attention_backward_fused(DType t, void* d_qkv, const void* d_out, const void* qkv, const void* out,
                                     const float* lse, float* delta, const FusedAttentionShape& a, cudaStream_t s);

// ---- embedding.cu ----
void launch_embedding_forward(DType t, void* out, const int32_t* ids, const int32_t* type_ids,
                              const void* tok, const void* pos, const void* type, int64_t rows,
                              int64_t cols, int64_t seq, int64_t vocab, int64_t types,
                              int* error, cudaStream_t s);
// dst[idx(r), :] += src[r, :] for r in [0, n), idx(r) = rows[r] (rows non-null) or r % seq.
// Deterministic: the sources of each destination row are summed in increasing r, so fp32
// results equal the CPU backend's serial loop bit for bit (embedding.cu says how). Bad rows
// set `error_bit`. scratch: index_add_scratch_bytes(n) bytes, 256-byte aligned.
size_t index_add_scratch_bytes(int64_t n);
void launch_index_add(DType t, void* dst, int64_t dst_rows, const void* src,
                      const int32_t* rows, int64_t seq, int64_t n, int64_t cols, void* scratch,
                      int* error, int error_bit, cudaStream_t s);
void launch_gather_rows(DType t, void* out, const void* in, const int32_t* rows, int64_t n,
                        int64_t cols, int64_t in_rows, int* error, cudaStream_t s);

// ---- cross_entropy.cu ----
void launch_cross_entropy(DType t, void* losses, void* d_logits, const void* logits,
                          const int32_t* labels, int64_t rows, int64_t vocab, float grad_scale,
                          int* error, cudaStream_t s);

// ---- adamw.cu ----
// grad: [n] of grad_t (fp32, or a model's half-precision gradient); copy (may be null):
// [n] of copy_t, receives the updated param rounded to copy_t. max_blocks > 0: at most that
// many blocks of 1024 threads (the side queue's SM bound), in chunks of 64 sweeps of them
// when `chunked`, else one launch over the whole span; 0: the usual grid.
void launch_adamw(float* param, DType grad_t, const void* grad, float* m, float* v, int64_t n,
                  const AdamWScalars& k, DType copy_t, void* copy, int max_blocks, bool chunked, cudaStream_t s);

}  // namespace mics::cuda
