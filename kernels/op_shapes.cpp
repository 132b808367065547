#include "kernels/op_shapes.h"

#include <stdexcept>
#include <string>

namespace mics {

namespace {
// The row count of `in` for a second dimension `cols` taken from a weight (cols > 0).
int64_t rows_of(const char* op, const char* weight, const Tensor& in, int64_t cols) {
  if (cols <= 0) throw ShapeError(std::string(op) + ": " + weight + " is empty");
  return in.numel() / cols;
}
}  // namespace

LinearDims linear_forward_dims(const Tensor& out, const Tensor& in, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear_forward";
  expect_rank(op, "weight", weight, 2);
  const int64_t n = dim(weight, 0), k = dim(weight, 1), m = rows_of(op, "weight", in, k);
  expect_shape(op, "in", in, {m, k});
  expect_shape(op, "out", out, {m, n});
  if (!bias.empty()) expect_shape(op, "bias", bias, {n});
  return {m, n, k};
}

LinearDims linear_backward_dims(const Tensor& d_in, const Tensor& d_weight, const Tensor& d_bias,
                                const Tensor& d_out, const Tensor& in, const Tensor& weight) {
  const char* op = "linear_backward";
  expect_rank(op, "weight", weight, 2);
  const int64_t n = dim(weight, 0), k = dim(weight, 1), m = rows_of(op, "weight", in, k);
  expect_shape(op, "in", in, {m, k});
  expect_shape(op, "d_out", d_out, {m, n});
  expect_shape(op, "d_weight", d_weight, {n, k});
  if (!d_in.empty()) expect_shape(op, "d_in", d_in, {m, k});
  if (!d_bias.empty()) expect_shape(op, "d_bias", d_bias, {n});
  return {m, n, k};
}

RowDims layernorm_forward_dims(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& in,
                               const Tensor& gamma, const Tensor& beta) {
  const char* op = "layernorm_forward";
  expect_rank(op, "gamma", gamma, 1);
  const int64_t c = dim(gamma, 0), m = rows_of(op, "gamma", in, c);
  expect_shape(op, "in", in, {m, c});
  expect_shape(op, "out", out, {m, c});
  expect_shape(op, "beta", beta, {c});
  expect_shape(op, "mean", mean, {m});
  expect_shape(op, "rstd", rstd, {m});
  return {m, c};
}

RowDims add_layernorm_forward_dims(const Tensor& sum, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& a, const Tensor& b, const Tensor& gamma, const Tensor& beta) {
  const RowDims d = layernorm_forward_dims(out, mean, rstd, sum, gamma, beta);
  expect_shape("add_layernorm_forward", "a", a, {d.rows, d.cols});
  expect_shape("add_layernorm_forward", "b", b, {d.rows, d.cols});
  return d;
}

RowDims layernorm_backward_dims(const Tensor& d_in, const Tensor& d_gamma, const Tensor& d_beta, const Tensor& d_out,
                                const Tensor& in, const Tensor& gamma, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_backward";
  expect_rank(op, "gamma", gamma, 1);
  const int64_t c = dim(gamma, 0), m = rows_of(op, "gamma", in, c);
  expect_shape(op, "in", in, {m, c});
  expect_shape(op, "d_out", d_out, {m, c});
  expect_shape(op, "d_in", d_in, {m, c});
  expect_shape(op, "d_gamma", d_gamma, {c});
  expect_shape(op, "d_beta", d_beta, {c});
  expect_shape(op, "mean", mean, {m});
  expect_shape(op, "rstd", rstd, {m});
  return {m, c};
}

namespace {
void check_attention_common(const char* op, const Tensor& qkv, const Tensor& out, const IntTensor& key_keep,
                            const AttentionDims& d) {
  if (d.batch <= 0 || d.seq <= 0 || d.heads <= 0 || d.head_dim <= 0)
    throw ShapeError(std::string(op) + ": attention dimensions must be positive");
  const int64_t c = d.heads * d.head_dim;
  expect_shape(op, "qkv", qkv, {d.batch, d.seq, 3 * c});
  if (!out.empty()) expect_shape(op, "out", out, {d.batch, d.seq, c});
  if (key_keep.data != nullptr && key_keep.numel() != d.batch * d.seq)
    throw ShapeError(std::string(op) + ": key_keep must have B*T entries");
}
}  // namespace

void check_attention_shapes(const char* op, const Tensor& qkv, const Tensor& probs, const Tensor& out,
                            const IntTensor& key_keep, const AttentionDims& d) {
  check_attention_common(op, qkv, out, key_keep, d);
  expect_shape(op, "probs", probs, {d.batch, d.heads, d.seq, d.seq});
}

void check_fused_attention_shapes(const char* op, const Tensor& qkv, const Tensor& lse, const Tensor& out,
                                  const IntTensor& key_keep, const AttentionDims& d) {
  check_attention_common(op, qkv, out, key_keep, d);
  expect_shape(op, "lse", lse, {d.batch, d.heads, d.seq});
}

RowDims embedding_dims(bool backward, const Tensor& out, const IntTensor& ids, const IntTensor& type_ids,
                       const Tensor& tok, const Tensor& pos, const Tensor& type, int64_t seq) {
  const char* op = backward ? "embedding_backward" : "embedding_forward";
  const char* tok_name = backward ? "d_tok" : "tok_table";
  const char* pos_name = backward ? "d_pos" : "pos_table";
  const char* type_name = backward ? "d_type" : "type_table";
  expect_rank(op, tok_name, tok, 2);
  expect_rank(op, pos_name, pos, 2);
  const int64_t rows = ids.numel(), c = dim(tok, 1);
  expect_shape(op, backward ? "d_out" : "out", out, {rows, c});
  expect_shape(op, pos_name, pos, {dim(pos, 0), c});
  if (seq <= 0 || rows % seq != 0) throw ShapeError(std::string(op) + ": rows not a multiple of seq");
  if (!type.empty()) {
    if (type_ids.numel() != rows) throw ShapeError(std::string(op) + ": type_ids must match ids");
    expect_rank(op, type_name, type, 2);
    expect_shape(op, type_name, type, {dim(type, 0), c});
  }
  if (seq > dim(pos, 0)) throw std::out_of_range("sequence longer than the position table");
  return {rows, c};
}

void expect_f64_scalar(const char* op, const Tensor& out) {
  if (out.dtype != DType::f64 || out.numel() != 1)
    throw ShapeError(std::string(op) + ": out must be one f64 element, not " + dtype_name(out.dtype) + " " +
                     out.shape.str());
}

}  // namespace mics
