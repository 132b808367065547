#pragma once
// Shape checks shared by the backends: each validates one op's tensor shapes against the
// contract in ops.h and returns the dimensions the op runs with, throwing ShapeError that
// names the op and the argument. Dtypes are left to each backend, which knows what it
// computes in.
#include <cstdint>

#include "kernels/ops.h"

namespace mics {

struct LinearDims {
  int64_t m, n, k;  // rows, output features, input features
};
// out[m,n], in[m,k], weight[n,k], bias[n] or empty.
LinearDims linear_forward_dims(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias);
// d_in[m,k] or empty, d_weight[n,k], d_bias[n] or empty, d_out[m,n], in[m,k], weight[n,k].
LinearDims linear_backward_dims(const Tensor& d_in, const Tensor& d_weight, const Tensor& d_bias,
                                const Tensor& d_out, const Tensor& in, const Tensor& weight);

struct RowDims {
  int64_t rows, cols;
};
// out, in [rows, cols]; gamma, beta [cols]; mean, rstd [rows].
RowDims layernorm_forward_dims(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& in,
                               const Tensor& gamma, const Tensor& beta);
// d_in, d_out, in [rows, cols]; d_gamma, d_beta, gamma [cols]; mean, rstd [rows].
// layernorm_forward_dims with in = sum, and a, b of sum's shape.
RowDims add_layernorm_forward_dims(const Tensor& sum, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& a, const Tensor& b, const Tensor& gamma, const Tensor& beta);
RowDims layernorm_backward_dims(const Tensor& d_in, const Tensor& d_gamma, const Tensor& d_beta, const Tensor& d_out,
                                const Tensor& in, const Tensor& gamma, const Tensor& mean, const Tensor& rstd);

// Materialised attention: qkv[B,T,3C], probs (or the backward's scratch) [B,H,T,T];
// out/d_out [B,T,C] when given; key_keep B*T entries when given.
void check_attention_shapes(const char* op, const Tensor& qkv, const Tensor& probs, const Tensor& out,
                            const IntTensor& key_keep, const AttentionDims& dims);
// Fused attention: qkv[B,T,3C], lse[B,H,T], out[B,T,C]; key_keep B*T entries when given.
void check_fused_attention_shapes(const char* op, const Tensor& qkv, const Tensor& lse, const Tensor& out,
                                  const IntTensor& key_keep, const AttentionDims& dims);

// A reduction's result left on the device (sum_squares_into): one f64 element.
void expect_f64_scalar(const char* op, const Tensor& out);

// Embedding tables [*, cols] (type table optional), rows = ids.numel() a multiple of seq,
// seq within the position table; out [rows, cols]. The backward passes the tables'
// gradients and d_out (`backward` names them so).
RowDims embedding_dims(bool backward, const Tensor& out, const IntTensor& ids, const IntTensor& type_ids,
                       const Tensor& tok, const Tensor& pos, const Tensor& type, int64_t seq);

}  // namespace mics
