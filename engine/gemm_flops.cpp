#include "engine/gemm_flops.h"

namespace mics {

namespace {
double product_flops(int64_t m, int64_t n, int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}
double attention_product_flops(const AttentionDims& d) {
  return product_flops(d.batch * d.heads * d.seq, d.seq, d.head_dim);
}
}  // namespace

double linear_forward_flops(const Tensor& in, const Tensor& weight) {
  const int64_t n = weight.shape[0], k = weight.shape[1];
  return product_flops(in.numel() / k, n, k);
}

double linear_backward_flops(const Tensor& d_in, const Tensor& d_out, const Tensor& in) {
  const int64_t k = in.shape[in.shape.rank - 1], n = d_out.shape[d_out.shape.rank - 1];
  const double one = product_flops(in.numel() / k, n, k);
  return d_in.empty() ? one : 2.0 * one;
}

double attention_forward_flops(const AttentionDims& dims) { return 2.0 * attention_product_flops(dims); }
double attention_backward_flops(const AttentionDims& dims) { return 4.0 * attention_product_flops(dims); }

}  // namespace mics
