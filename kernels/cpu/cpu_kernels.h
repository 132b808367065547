#pragma once
// The CPU backend's kernels as templates over the element type: float is the training
// type, double serves the whole-model gradient checks. Instantiated for both in each .cpp.
#include <cstdint>

#include "kernels/counter_hash.h"
#include "kernels/ops.h"

namespace mics::cpu {

// Row-major C[M,N] = alpha * op(A) @ op(B) + beta * C through OpenBLAS.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

template <class T> void linear_forward(T* out, const T* in, const T* weight, const T* bias,
                                       int64_t m, int64_t n, int64_t k);
template <class T> void linear_backward(T* d_in, T* d_weight, T* d_bias, const T* d_out,
                                        const T* in, const T* weight, int64_t m, int64_t n,
                                        int64_t k, bool accumulate_d_in, bool accumulate_params);

template <class T> void gelu_forward(T* out, const T* in, int64_t n, GeluKind kind);
template <class T> void gelu_backward(T* d_in, const T* d_out, const T* in, int64_t n,
                                      GeluKind kind);

template <class T> void layernorm_forward(T* out, T* mean, T* rstd, const T* in, const T* gamma,
                                          const T* beta, int64_t rows, int64_t cols, double eps);
template <class T> void layernorm_backward(T* d_in, T* d_gamma, T* d_beta, const T* d_out,
                                           const T* in, const T* gamma, const T* mean,
                                           const T* rstd, int64_t rows, int64_t cols,
                                           bool accumulate_d_in, bool accumulate_params);

template <class T> void attention_forward(T* out, T* probs, const T* qkv, const int32_t* key_keep,
                                          const AttentionDims& dims, DropoutSpec dropout);
template <class T> void attention_backward(T* d_qkv, T* scratch, const T* d_out, const T* qkv,
                                           const T* probs, const AttentionDims& dims,
                                           DropoutSpec dropout);
template <class T> void attention_forward_fused(T* out, T* lse, const T* qkv, const int32_t* key_keep,
                                                const AttentionDims& dims, DropoutSpec dropout);
template <class T> void attention_backward_fused(T* d_qkv, const T* d_out, const T* qkv, const T* lse,
                                                 const int32_t* key_keep, const AttentionDims& dims,
                                                 DropoutSpec dropout);

template <class T> void embedding_forward(T* out, const int32_t* ids, const int32_t* type_ids,
                                          const T* tok, const T* pos, const T* type, int64_t rows,
                                          int64_t cols, int64_t seq, int64_t vocab,
                                          int64_t positions, int64_t types);
template <class T> void embedding_backward(T* d_tok, T* d_pos, T* d_type, const T* d_out,
                                           const int32_t* ids, const int32_t* type_ids,
                                           int64_t rows, int64_t cols, int64_t seq);

template <class T> void cross_entropy(T* losses, T* d_logits, const T* logits,
                                      const int32_t* labels, int64_t rows, int64_t vocab,
                                      double grad_scale);

template <class T> void dropout_forward(T* out, const T* in, int64_t n, DropoutSpec spec);

void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
           const AdamWSpec& spec);

// dropout_keep (the mask shared with the CUDA backend) lives in kernels/counter_hash.h.

}  // namespace mics::cpu
