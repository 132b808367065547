// The CPU backend: argument checks, dtype dispatch, and host memory.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/op_shapes.h"

namespace mics {
namespace {

// Calls f(T{}) with T the C++ type of `dtype`; the CPU computes in fp32 and fp64.
template <class F>
void dispatch(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default: throw ShapeError(std::string(op) + ": the CPU backend has no " + dtype_name(dtype));
  }
}

template <class T> T* p(const Tensor& t) { return t.empty() ? nullptr : t.ptr<T>(); }

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  bool supports(DType dtype) const override { return dtype == DType::f32 || dtype == DType::f64; }

  void* allocate(size_t bytes) override {
    // 64-byte alignment for vector loads; aligned_alloc wants a multiple of the alignment.
    void* ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (ptr == nullptr) throw std::bad_alloc();
    return ptr;
  }
  void release(void* ptr) noexcept override { std::free(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

  void fill_zero(Tensor x) override { std::memset(x.data, 0, x.bytes()); }

  void cast(Tensor out, Tensor in) override {
    expect_numel("cast", "out", out, in.numel());
    if (out.dtype == in.dtype) {
      std::memmove(out.data, in.data, in.bytes());
      return;
    }
    dispatch("cast", out.dtype, [&](auto o) {
      using O = decltype(o);
      dispatch("cast", in.dtype, [&](auto i) {
        using I = decltype(i);
        O* dst = out.ptr<O>();
        const I* src = in.ptr<I>();
        for (int64_t k = 0; k < in.numel(); ++k) dst[k] = static_cast<O>(src[k]);
      });
    });
  }

  void add(Tensor out, Tensor a, Tensor b) override {
    expect_same_dtype("add", out, a);
    expect_same_dtype("add", out, b);
    expect_numel("add", "a", a, out.numel());
    expect_numel("add", "b", b, out.numel());
    dispatch("add", out.dtype, [&](auto t) {
      using T = decltype(t);
      T* o = out.ptr<T>();
      const T* x = a.ptr<T>();
      const T* y = b.ptr<T>();
      const int64_t n = out.numel();
#pragma omp parallel for schedule(static)
      for (int64_t k = 0; k < n; ++k) o[k] = x[k] + y[k];
    });
  }

  void scale(Tensor x, double alpha) override {
    dispatch("scale", x.dtype, [&](auto t) {
      using T = decltype(t);
      T* v = x.ptr<T>();
      for (int64_t k = 0; k < x.numel(); ++k) v[k] = static_cast<T>(v[k] * alpha);
    });
  }

  double sum(Tensor x) override {
    double total = 0;
    dispatch("sum", x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* v = x.ptr<T>();
      for (int64_t k = 0; k < x.numel(); ++k) total += v[k];
    });
    return total;
  }

  double sum_squares(Tensor x) override {
    double total = 0;
    dispatch("sum_squares", x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* v = x.ptr<T>();
      for (int64_t k = 0; k < x.numel(); ++k) total += static_cast<double>(v[k]) * v[k];
    });
    return total;
  }

  void sum_squares_into(Tensor out, Tensor x) override {
    expect_f64_scalar("sum_squares_into", out);
    *out.ptr<double>() = sum_squares(x);
  }

  int64_t count_nonfinite(Tensor x) override {
    int64_t bad = 0;
    dispatch("count_nonfinite", x.dtype, [&](auto t) {
      using T = decltype(t);
      const T* v = x.ptr<T>();
      for (int64_t k = 0; k < x.numel(); ++k) bad += !std::isfinite(v[k]);
    });
    return bad;
  }

  void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) override {
    const char* op = "linear_forward";
    const auto [m, n, k] = linear_forward_dims(out, in, weight, bias);
    expect_same_dtype(op, out, in);
    expect_same_dtype(op, out, weight);
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::linear_forward<T>(p<T>(out), p<T>(in), p<T>(weight), p<T>(bias), m, n, k);
    });
  }

  void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor in,
                       Tensor weight, Accumulate acc, Accumulate acc_params) override {
    const char* op = "linear_backward";
    const auto [m, n, k] = linear_backward_dims(d_in, d_weight, d_bias, d_out, in, weight);
    expect_same_dtype(op, d_out, in);
    expect_same_dtype(op, d_out, d_weight);
    dispatch(op, d_out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::linear_backward<T>(p<T>(d_in), p<T>(d_weight), p<T>(d_bias), p<T>(d_out), p<T>(in),
                              p<T>(weight), m, n, k, acc == Accumulate::yes, acc_params == Accumulate::yes);
    });
  }

  void gelu_forward(Tensor out, Tensor in, GeluKind kind) override {
    expect_numel("gelu_forward", "in", in, out.numel());
    expect_same_dtype("gelu_forward", out, in);
    dispatch("gelu_forward", out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::gelu_forward<T>(p<T>(out), p<T>(in), out.numel(), kind);
    });
  }

  void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind kind) override {
    expect_numel("gelu_backward", "d_out", d_out, d_in.numel());
    expect_numel("gelu_backward", "in", in, d_in.numel());
    expect_same_dtype("gelu_backward", d_in, in);
    dispatch("gelu_backward", d_in.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::gelu_backward<T>(p<T>(d_in), p<T>(d_out), p<T>(in), d_in.numel(), kind);
    });
  }

  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor in, Tensor gamma,
                         Tensor beta, float eps) override {
    const char* op = "layernorm_forward";
    const auto [m, c] = layernorm_forward_dims(out, mean, rstd, in, gamma, beta);
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::layernorm_forward<T>(p<T>(out), p<T>(mean), p<T>(rstd), p<T>(in), p<T>(gamma),
                                p<T>(beta), m, c, eps);
    });
  }

  void reserve_scratch(const ScratchBounds&) override {}  // the CPU ops keep no scratch

  // Composed here; the CUDA backend fuses what cuBLASLt's epilogues allow.
  void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias,
                           GeluKind kind) override {
    linear_forward(pre, in, weight, bias);
    gelu_forward(act, pre, kind);
  }
  void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor act,
                            Tensor pre, Tensor weight, GeluKind kind, Accumulate acc_params) override {
    linear_backward(d_pre, d_weight, d_bias, d_out, act, weight, Accumulate::no, acc_params);
    gelu_backward(d_pre, d_pre, pre, kind);
  }

  // Two passes here; the CUDA backend fuses them.
  void add_layernorm_forward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b,
                             Tensor gamma, Tensor beta, float eps) override {
    add_layernorm_forward_dims(sum, out, mean, rstd, a, b, gamma, beta);
    add(sum, a, b);
    layernorm_forward(out, mean, rstd, sum, gamma, beta, eps);
  }

  void layernorm_backward(Tensor d_in, Tensor d_gamma, Tensor d_beta, Tensor d_out, Tensor in,
                          Tensor gamma, Tensor mean, Tensor rstd, Accumulate acc, Accumulate acc_params) override {
    const char* op = "layernorm_backward";
    const auto [m, c] = layernorm_backward_dims(d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd);
    dispatch(op, d_in.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::layernorm_backward<T>(p<T>(d_in), p<T>(d_gamma), p<T>(d_beta), p<T>(d_out), p<T>(in),
                                 p<T>(gamma), p<T>(mean), p<T>(rstd), m, c,
                                 acc == Accumulate::yes, acc_params == Accumulate::yes);
    });
  }

  void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor key_keep,
                         const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_forward";
    check_attention_shapes(op, qkv, probs, out, key_keep, d);
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::attention_forward<T>(p<T>(out), p<T>(probs), p<T>(qkv), key_keep.data, d, dropout);
    });
  }

  void attention_backward(Tensor d_qkv, Tensor scratch, Tensor d_out, Tensor qkv, Tensor probs,
                          const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_backward";
    check_attention_shapes(op, qkv, probs, d_out, IntTensor{}, d);
    expect_shape(op, "d_qkv", d_qkv, qkv.shape);
    expect_shape(op, "scratch", scratch, probs.shape);
    dispatch(op, d_qkv.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::attention_backward<T>(p<T>(d_qkv), p<T>(scratch), p<T>(d_out), p<T>(qkv), p<T>(probs),
                                 d, dropout);
    });
  }

  void attention_forward_fused(Tensor out, Tensor lse, Tensor qkv, IntTensor key_keep,
                               const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_forward_fused";
    check_fused_attention_shapes(op, qkv, lse, out, key_keep, d);
    expect_same_dtype(op, qkv, lse);  // lse in the op's dtype here (fp32 or fp64)
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::attention_forward_fused<T>(p<T>(out), p<T>(lse), p<T>(qkv), key_keep.data, d, dropout);
    });
  }

  void attention_backward_fused(Tensor d_qkv, Tensor d_out, Tensor qkv, Tensor out, Tensor lse,
                                IntTensor key_keep, const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_backward_fused";
    check_fused_attention_shapes(op, qkv, lse, out, key_keep, d);
    expect_same_dtype(op, qkv, lse);
    expect_shape(op, "d_qkv", d_qkv, qkv.shape);
    expect_shape(op, "d_out", d_out, out.shape);
    dispatch(op, d_qkv.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::attention_backward_fused<T>(p<T>(d_qkv), p<T>(d_out), p<T>(qkv), p<T>(lse), key_keep.data, d,
                                       dropout);
    });
  }

  void embedding_forward(Tensor out, IntTensor ids, IntTensor type_ids, Tensor tok, Tensor pos,
                         Tensor type, int64_t seq) override {
    const char* op = "embedding_forward";
    const auto [rows, c] = embedding_dims(false, out, ids, type_ids, tok, pos, type, seq);
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::embedding_forward<T>(p<T>(out), ids.data, type_ids.data, p<T>(tok), p<T>(pos),
                                p<T>(type), rows, c, seq, dim(tok, 0), dim(pos, 0),
                                type.empty() ? 0 : dim(type, 0));
    });
  }

  void embedding_backward(Tensor d_tok, Tensor d_pos, Tensor d_type, Tensor d_out, IntTensor ids,
                          IntTensor type_ids, int64_t seq) override {
    const char* op = "embedding_backward";
    const auto [rows, c] = embedding_dims(true, d_out, ids, type_ids, d_tok, d_pos, d_type, seq);
    dispatch(op, d_out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::embedding_backward<T>(p<T>(d_tok), p<T>(d_pos), p<T>(d_type), p<T>(d_out), ids.data,
                                 type_ids.data, rows, c, seq);
    });
  }

  void gather_rows(Tensor out, Tensor in, IntTensor rows) override {
    const char* op = "gather_rows";
    expect_rank(op, "in", in, 2);
    const int64_t n = rows.numel(), c = dim(in, 1);
    expect_shape(op, "out", out, {n, c});
    dispatch(op, out.dtype, [&](auto t) {
      using T = decltype(t);
      for (int64_t i = 0; i < n; ++i) {
        if (rows.data[i] < 0 || rows.data[i] >= dim(in, 0)) throw ShapeError("gather_rows: row out of range");
        std::memcpy(p<T>(out) + i * c, p<T>(in) + rows.data[i] * c, sizeof(T) * static_cast<size_t>(c));
      }
    });
  }

  void scatter_add_rows(Tensor d_in, Tensor d_out, IntTensor rows) override {
    const char* op = "scatter_add_rows";
    expect_rank(op, "d_in", d_in, 2);
    const int64_t n = rows.numel(), c = dim(d_in, 1);
    expect_shape(op, "d_out", d_out, {n, c});
    dispatch(op, d_in.dtype, [&](auto t) {
      using T = decltype(t);
      for (int64_t i = 0; i < n; ++i) {
        if (rows.data[i] < 0 || rows.data[i] >= dim(d_in, 0)) throw ShapeError("scatter_add_rows: row out of range");
        T* dst = p<T>(d_in) + rows.data[i] * c;
        const T* src = p<T>(d_out) + i * c;
        for (int64_t k = 0; k < c; ++k) dst[k] += src[k];
      }
    });
  }

  void cross_entropy(Tensor losses, Tensor d_logits, Tensor logits, IntTensor labels,
                     double grad_scale) override {
    const char* op = "cross_entropy";
    expect_rank(op, "logits", logits, 2);
    const int64_t m = dim(logits, 0), v = dim(logits, 1);
    expect_shape(op, "losses", losses, {m});
    if (!d_logits.empty()) expect_shape(op, "d_logits", d_logits, {m, v});
    if (labels.numel() != m) throw ShapeError("cross_entropy: labels must have one entry per row");
    dispatch(op, logits.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::cross_entropy<T>(p<T>(losses), p<T>(d_logits), p<T>(logits), labels.data, m, v,
                            grad_scale);
    });
  }

  void dropout_forward(Tensor out, Tensor in, DropoutSpec spec) override {
    expect_numel("dropout_forward", "in", in, out.numel());
    if (!spec.enabled()) {
      cast(out, in);
      return;
    }
    dispatch("dropout_forward", out.dtype, [&](auto t) {
      using T = decltype(t);
      cpu::dropout_forward<T>(p<T>(out), p<T>(in), out.numel(), spec);
    });
  }

  // The same kept elements and the same scale: dropout is linear and self-adjoint.
  void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec spec) override {
    dropout_forward(d_in, d_out, spec);
  }

  void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec,
             Tensor param_copy) override {
    const int64_t n = param.numel();
    expect_numel("adamw", "grad", grad, n);
    expect_numel("adamw", "m", m, n);
    expect_numel("adamw", "v", v, n);
    if (!param_copy.empty()) expect_numel("adamw", "param_copy", param_copy, n);
    cpu::adamw(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(), n, spec);
    if (!param_copy.empty()) cast(param_copy, param);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace mics
