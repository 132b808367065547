#pragma once
// FLOPs of the backend ops that are matrix products, from their arguments: what the
// simulator charges at the GEMM peak and what --profile divides by the measured time.
#include "kernels/ops.h"

namespace mics {

// out[M,N] = in[M,K] @ weight[N,K]^T: 2MNK.
double linear_forward_flops(const Tensor& in, const Tensor& weight);
// d_weight always (2MNK), d_in when requested (another 2MNK).
double linear_backward_flops(const Tensor& d_in, const Tensor& d_out, const Tensor& in);
// Scores Q K^T and the weighted sum P V: 2 x 2 B H T^2 D.
double attention_forward_flops(const AttentionDims& dims);
// dV, dP, dQ, dK: 4 x 2 B H T^2 D.
double attention_backward_flops(const AttentionDims& dims);

}  // namespace mics
