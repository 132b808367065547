#include "engine/sim/sim_backend.h"

#include <algorithm>
#include <cstdint>

#include "engine/gemm_flops.h"

namespace mics::sim {

namespace {

class SimBackend final : public Backend {
 public:
  SimBackend(const ClusterSpec& cluster, Timeline& timeline)
      : timeline_(timeline), half_flops_per_s_(cluster.gemm_flops_per_s(true)),
        fp32_flops_per_s_(cluster.gemm_flops_per_s(false)), bytes_per_s_(cluster.memory_bytes_per_s()) {}

  const char* name() const override { return "sim"; }
  bool supports(DType dtype) const override { return dtype != DType::f64; }

  // Distinct, aligned, never dereferenced addresses: views and slices work as usual.
  void* allocate(size_t bytes) override {
    void* ptr = reinterpret_cast<void*>(next_address_);
    next_address_ += (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096;
    return ptr;
  }
  void release(void*) noexcept override {}
  void copy_from_host(void*, const void*, size_t) override {}
  void copy_to_host(void* dst, const void*, size_t bytes) override { std::fill_n(static_cast<char*>(dst), bytes, 0); }
  void synchronize() override {}

  void fill_zero(Tensor x) override { stream(1, x); }
  void cast(Tensor out, Tensor in) override { charge_stream(static_cast<double>(in.bytes() + out.bytes())); }
  void add(Tensor out, Tensor a, Tensor b) override { stream(3, out); }
  void scale(Tensor x, double) override { stream(2, x); }
  // Reductions over gradient shards.
  double sum(Tensor x) override { return stream(1, x), 0.0; }
  double sum_squares(Tensor x) override { return stream(1, x), 0.0; }
  void sum_squares_into(Tensor, Tensor x) override { stream(1, x); }
  int64_t count_nonfinite(Tensor x) override { return stream(1, x), 0; }

  void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) override {
    const int64_t m = in.shape[0], k = in.shape[1], n = weight.shape[0];
    gemm(in.dtype, m, n, k);
  }
  void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor in, Tensor weight,
                       Accumulate, Accumulate) override {
    const int64_t m = d_out.shape[0], n = d_out.shape[1], k = in.shape[1];
    if (!d_in.empty()) gemm(in.dtype, m, k, n);
    gemm(in.dtype, n, k, m);
    if (!d_bias.empty()) stream(1, d_out);
  }
  void gelu_forward(Tensor out, Tensor in, GeluKind) override { stream(2, in); }
  void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind) override { stream(3, in); }
  void layernorm_forward(Tensor out, Tensor, Tensor, Tensor in, Tensor, Tensor, float) override { stream(2, in); }
  void reserve_scratch(const ScratchBounds&) override {}

  // Costed as the two ops they replace.
  void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias, GeluKind kind) override {
    linear_forward(pre, in, weight, bias);
    gelu_forward(act, pre, kind);
  }
  void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor act, Tensor pre,
                            Tensor weight, GeluKind kind, Accumulate acc_params) override {
    linear_backward(d_pre, d_weight, d_bias, d_out, act, weight, Accumulate::no, acc_params);
    gelu_backward(d_pre, d_pre, pre, kind);
  }
  // Reads a and b, writes sum and out.
  void add_layernorm_forward(Tensor sum, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, float) override {
    stream(4, sum);
  }
  void layernorm_backward(Tensor d_in, Tensor, Tensor, Tensor d_out, Tensor in, Tensor, Tensor, Tensor,
                          Accumulate acc, Accumulate) override {
    stream(acc == Accumulate::yes ? 4 : 3, in);
  }

  // Batched GEMMs for scores and the weighted sum, the score matrix written, softmaxed and
  // read back (the kernels as written, no fused attention).
  void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor, const AttentionDims& d,
                         DropoutSpec) override {
    const double bh = static_cast<double>(d.batch * d.heads), e = static_cast<double>(dtype_size(qkv.dtype));
    charge_gemm(qkv.dtype, attention_forward_flops(d),
                e * bh * (4.0 * d.seq * d.head_dim + 2.0 * d.seq * d.seq));
    stream(4, probs);
  }
  void attention_backward(Tensor d_qkv, Tensor scratch, Tensor, Tensor, Tensor probs, const AttentionDims& d,
                          DropoutSpec) override {
    const double bh = static_cast<double>(d.batch * d.heads), e = static_cast<double>(dtype_size(probs.dtype));
    charge_gemm(probs.dtype, attention_backward_flops(d),
                e * bh * (8.0 * d.seq * d.head_dim + 4.0 * d.seq * d.seq));
    stream(4, probs);
  }

  // Fused: q, k, v read and out written once per pass, no T x T traffic; the CUDA backward
  // runs 7 products (S and dP' twice: once for dK/dV, once for dQ) where the materialised
  // one runs 4.
  void attention_forward_fused(Tensor, Tensor, Tensor qkv, IntTensor, const AttentionDims& d, DropoutSpec) override {
    const double bh = static_cast<double>(d.batch * d.heads), e = static_cast<double>(dtype_size(qkv.dtype));
    charge_gemm(qkv.dtype, attention_forward_flops(d), e * bh * 4.0 * d.seq * d.head_dim);
  }
  void attention_backward_fused(Tensor d_qkv, Tensor, Tensor, Tensor, Tensor, IntTensor, const AttentionDims& d,
                                DropoutSpec) override {
    const double bh = static_cast<double>(d.batch * d.heads), e = static_cast<double>(dtype_size(d_qkv.dtype));
    charge_gemm(d_qkv.dtype, attention_backward_flops(d) * 7.0 / 4.0, e * bh * 2.0 * 9.0 * d.seq * d.head_dim);
  }

  void embedding_forward(Tensor out, IntTensor, IntTensor, Tensor, Tensor, Tensor type_table, int64_t) override {
    stream(type_table.empty() ? 3 : 4, out);
  }
  void embedding_backward(Tensor, Tensor, Tensor d_type, Tensor d_out, IntTensor, IntTensor, int64_t) override {
    stream(d_type.empty() ? 5 : 7, d_out);
  }
  void gather_rows(Tensor out, Tensor, IntTensor) override { stream(2, out); }
  void scatter_add_rows(Tensor, Tensor d_out, IntTensor) override { stream(3, d_out); }
  void cross_entropy(Tensor, Tensor d_logits, Tensor logits, IntTensor, double) override {
    stream(d_logits.empty() ? 1 : 2, logits);
  }
  void dropout_forward(Tensor out, Tensor in, DropoutSpec) override { stream(2, in); }
  void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec) override { stream(2, d_out); }

  // fp32 shards: read param, m, v and the gradient (fp32, or the model's own in place);
  // write param, m, v (and the working copy).
  void adamw(Tensor param, Tensor grad, Tensor, Tensor, const AdamWSpec&, Tensor param_copy) override {
    const double copy_bytes = param_copy.empty() ? 0.0 : static_cast<double>(dtype_size(param_copy.dtype));
    const double grad_bytes = static_cast<double>(dtype_size(grad.dtype));
    const double seconds = static_cast<double>(param.numel()) * (6.0 * 4.0 + grad_bytes + copy_bytes) / bytes_per_s_;
    timeline_.compute_s += seconds;
    timeline_.optimizer_s += seconds;
  }

 private:
  // An element-wise op touching `passes` tensors the size and dtype of `x`.
  void stream(double passes, const Tensor& x) { charge_stream(passes * static_cast<double>(x.bytes())); }
  void charge_stream(double bytes) {
    const double seconds = bytes / bytes_per_s_;
    timeline_.compute_s += seconds;
    timeline_.elementwise_s += seconds;
  }
  // out[m,n] = a[m,k] b[k,n]: roofline of its FLOPs and its operand bytes.
  void gemm(DType dtype, int64_t m, int64_t n, int64_t k) {
    const double M = static_cast<double>(m), N = static_cast<double>(n), K = static_cast<double>(k);
    charge_gemm(dtype, 2.0 * M * N * K, static_cast<double>(dtype_size(dtype)) * (M * K + K * N + M * N));
  }
  // Half-precision GEMMs run on the tensor cores' peak, fp32 on the fp32 peak.
  void charge_gemm(DType dtype, double flops, double bytes) {
    const double peak = dtype == DType::f32 ? fp32_flops_per_s_ : half_flops_per_s_;
    const double seconds = std::max(flops / peak, bytes / bytes_per_s_);
    timeline_.compute_s += seconds;
    timeline_.gemm_s += seconds;
  }

  Timeline& timeline_;
  double half_flops_per_s_, fp32_flops_per_s_, bytes_per_s_;
  uintptr_t next_address_ = uintptr_t{1} << 40;
};

}  // namespace

std::unique_ptr<Backend> make_sim_backend(const ClusterSpec& cluster, Timeline& timeline) {
  return std::make_unique<SimBackend>(cluster, timeline);
}

}  // namespace mics::sim
