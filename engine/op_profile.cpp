#include "engine/op_profile.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "engine/gemm_flops.h"

namespace mics {

void OpProfile::add(const char* op, double seconds, double flops, const LinearShape* shape) {
  auto count = [&](Entry& e) {
    ++e.calls;
    e.seconds += seconds;
    e.flops += flops;
    if (shape != nullptr) e.rows += static_cast<double>(shape->rows);
  };
  count(entries_[op]);
  if (shape != nullptr)
    count(shapes_[{op, shape->in, shape->out, std::bit_width(static_cast<uint64_t>(std::max<int64_t>(shape->rows, 0)))}]);
}

void OpProfile::add_timed(const char* op, double flops, DeviceTimeline& timeline, int64_t begin, int64_t end,
                          const LinearShape* shape) {
  timing_ = timeline.how();
  pending_.push_back({op, flops, &timeline, begin, end, shape != nullptr ? std::optional(*shape) : std::nullopt});
}

void OpProfile::settle() {
  DeviceTimeline* timeline = nullptr;
  for (const Pending& p : pending_) {
    add(p.op, p.timeline->seconds_between(p.begin, p.end), p.flops, p.shape ? &*p.shape : nullptr);
    timeline = p.timeline;
  }
  pending_.clear();
  if (timeline != nullptr) timeline->forget();
}

void OpProfile::reset() {
  settle();  // lets the timeline reuse its marks
  entries_.clear();
  shapes_.clear();
}

std::string OpProfile::table(double step_seconds, int64_t steps) const {
  std::vector<std::pair<std::string, Entry>> rows(entries_.begin(), entries_.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  const double n = static_cast<double>(std::max<int64_t>(steps, 1));
  std::string out = fmt::format("{:<20} {:>10} {:>12} {:>8} {:>10}\n", "op", "calls/step", "ms/step", "share", "TFLOP/s");
  double covered = 0;
  for (const auto& [op, e] : rows) {
    covered += e.seconds;
    const std::string rate = e.flops > 0 && e.seconds > 0 ? fmt::format("{:.3g}", e.flops / e.seconds / 1e12) : "";
    out += fmt::format("{:<20} {:>10.1f} {:>12.3f} {:>7.1f}% {:>10}\n", op, static_cast<double>(e.calls) / n,
                       1e3 * e.seconds / n, 100.0 * e.seconds / n / step_seconds, rate);
  }
  const double rest = step_seconds - covered / n;
  out += fmt::format("{:<20} {:>10} {:>12.3f} {:>7.1f}%\n", "(not in an op)", "", 1e3 * rest, 100.0 * rest / step_seconds);
  out += fmt::format("{:<20} {:>10} {:>12.3f} {:>7.1f}%", "step", "", 1e3 * step_seconds, 100.0);
  if (shapes_.empty()) return out;
  // The linear ops per shape: rows is the mean per call (tokens; BERT's head: masked rows).
  std::vector<std::pair<ShapeKey, Entry>> shapes(shapes_.begin(), shapes_.end());
  std::sort(shapes.begin(), shapes.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  out += fmt::format("\n\nlinear ops by shape (in->out features; rows: the mean per call)\n{:<34} {:>8} {:>10} {:>12} {:>8} {:>10}",
                     "op in->out", "rows", "calls/step", "ms/step", "share", "TFLOP/s");
  for (const auto& [key, e] : shapes) {
    const std::string rate = e.flops > 0 && e.seconds > 0 ? fmt::format("{:.3g}", e.flops / e.seconds / 1e12) : "";
    const auto& [op, in, out_features, bits] = key;
    out += fmt::format("\n{:<34} {:>8.0f} {:>10.1f} {:>12.3f} {:>7.1f}% {:>10}", fmt::format("{} {}->{}", op, in, out_features),
                       e.rows / static_cast<double>(std::max<int64_t>(e.calls, 1)), static_cast<double>(e.calls) / n,
                       1e3 * e.seconds / n, 100.0 * e.seconds / n / step_seconds, rate);
  }
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

// For a backend without a timeline of its own: each mark waits for the work queued so far
// (work queued before an op is not the op's), then reads the host clock.
class HostTimeline final : public DeviceTimeline {
 public:
  explicit HostTimeline(Backend& backend) : backend_(backend) {}
  int64_t mark() override {
    backend_.synchronize();
    at_.push_back(Clock::now());
    return static_cast<int64_t>(at_.size()) - 1;
  }
  double seconds_between(int64_t begin, int64_t end) override {
    return std::chrono::duration<double>(at_.at(static_cast<size_t>(end)) - at_.at(static_cast<size_t>(begin)))
        .count();
  }
  void forget() override { at_.clear(); }
  const char* how() const override {
    return "the device is synchronised around every op, so the steps run slower than unprofiled ones";
  }

 private:
  Backend& backend_;
  std::vector<Clock::time_point> at_;
};

class ProfilingBackend final : public Backend {
 public:
  ProfilingBackend(std::unique_ptr<Backend> inner, OpProfile& profile)
      : inner_(std::move(inner)), profile_(profile), host_timeline_(*inner_) {
    timeline_ = inner_->timeline() != nullptr ? inner_->timeline() : &host_timeline_;
  }

  // Marks around the op (also on an exception, and around a returned value), read at the
  // next settle; a linear op also counted under its shape.
  template <class F>
  auto timed(const char* op, double flops, F&& f, const OpProfile::LinearShape* shape = nullptr) {
    struct Marks {
      OpProfile& profile;
      DeviceTimeline& timeline;
      const char* op;
      double flops;
      const OpProfile::LinearShape* shape;
      int64_t begin;
      ~Marks() {
        try {
          profile.add_timed(op, flops, timeline, begin, timeline.mark(), shape);
        } catch (...) {  // the op's own error is the one to report
        }
      }
    } marks{profile_, *timeline_, op, flops, shape, timeline_->mark()};
    return f();
  }

  // in[rows, K] (any leading dims) through weight[N, K].
  static OpProfile::LinearShape linear_shape(const Tensor& in, const Tensor& weight) {
    const int64_t k = weight.shape.rank == 2 ? weight.shape[1] : 0, n = weight.shape.rank == 2 ? weight.shape[0] : 0;
    return {k > 0 ? in.numel() / k : 0, k, n};
  }

  const char* name() const override { return inner_->name(); }
  bool supports(DType dtype) const override { return inner_->supports(dtype); }

  // Memory management and transfers are set-up and data loading: forwarded, not timed.
  void* allocate(size_t bytes) override { return inner_->allocate(bytes); }
  void release(void* ptr) noexcept override { inner_->release(ptr); }
  void* allocate_host(size_t bytes) override { return inner_->allocate_host(bytes); }
  void release_host(void* ptr) noexcept override { inner_->release_host(ptr); }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    timed("copy_from_host", 0, [&] { inner_->copy_from_host(dst, src, bytes); });
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    timed("copy_to_host", 0, [&] { inner_->copy_to_host(dst, src, bytes); });
  }
  void synchronize() override { inner_->synchronize(); }
  DeviceTimeline* timeline() override { return inner_->timeline(); }

  void fill_zero(Tensor x) override { timed("fill_zero", 0, [&] { inner_->fill_zero(x); }); }
  void cast(Tensor out, Tensor in) override { timed("cast", 0, [&] { inner_->cast(out, in); }); }
  void add(Tensor out, Tensor a, Tensor b) override { timed("add", 0, [&] { inner_->add(out, a, b); }); }
  void scale(Tensor x, double alpha) override { timed("scale", 0, [&] { inner_->scale(x, alpha); }); }
  double sum(Tensor x) override { return timed("sum", 0, [&] { return inner_->sum(x); }); }
  double sum_squares(Tensor x) override { return timed("sum_squares", 0, [&] { return inner_->sum_squares(x); }); }
  void sum_squares_into(Tensor out, Tensor x) override {
    timed("sum_squares", 0, [&] { inner_->sum_squares_into(out, x); });
  }
  int64_t count_nonfinite(Tensor x) override {
    return timed("count_nonfinite", 0, [&] { return inner_->count_nonfinite(x); });
  }

  void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) override {
    const auto shape = linear_shape(in, weight);
    timed("linear_forward", linear_forward_flops(in, weight), [&] { inner_->linear_forward(out, in, weight, bias); },
          &shape);
  }
  void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor in, Tensor weight,
                       Accumulate acc, Accumulate acc_params) override {
    const auto shape = linear_shape(in, weight);
    timed("linear_backward", linear_backward_flops(d_in, d_out, in),
          [&] { inner_->linear_backward(d_in, d_weight, d_bias, d_out, in, weight, acc, acc_params); }, &shape);
  }
  void gelu_forward(Tensor out, Tensor in, GeluKind kind) override {
    timed("gelu_forward", 0, [&] { inner_->gelu_forward(out, in, kind); });
  }
  void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind kind) override {
    timed("gelu_backward", 0, [&] { inner_->gelu_backward(d_in, d_out, in, kind); });
  }
  void reserve_scratch(const ScratchBounds& bounds) override { inner_->reserve_scratch(bounds); }
  void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias, GeluKind kind) override {
    const auto shape = linear_shape(in, weight);
    timed("linear_gelu_forward", linear_forward_flops(in, weight),
          [&] { inner_->linear_gelu_forward(act, pre, in, weight, bias, kind); }, &shape);
  }
  void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor act, Tensor pre,
                            Tensor weight, GeluKind kind, Accumulate acc_params) override {
    const auto shape = linear_shape(act, weight);
    timed("linear_gelu_backward", linear_backward_flops(d_pre, d_out, act),
          [&] { inner_->linear_gelu_backward(d_pre, d_weight, d_bias, d_out, act, pre, weight, kind, acc_params); },
          &shape);
  }
  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor in, Tensor gamma, Tensor beta,
                         float eps) override {
    timed("layernorm_forward", 0, [&] { inner_->layernorm_forward(out, mean, rstd, in, gamma, beta, eps); });
  }
  void add_layernorm_forward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor gamma,
                             Tensor beta, float eps) override {
    timed("add_layernorm_forward", 0,
          [&] { inner_->add_layernorm_forward(sum, out, mean, rstd, a, b, gamma, beta, eps); });
  }
  void layernorm_backward(Tensor d_in, Tensor d_gamma, Tensor d_beta, Tensor d_out, Tensor in, Tensor gamma,
                          Tensor mean, Tensor rstd, Accumulate acc, Accumulate acc_params) override {
    timed("layernorm_backward", 0,
          [&] { inner_->layernorm_backward(d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd, acc, acc_params); });
  }
  void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor key_keep, const AttentionDims& dims,
                         DropoutSpec dropout) override {
    timed("attention_forward", attention_forward_flops(dims),
          [&] { inner_->attention_forward(out, probs, qkv, key_keep, dims, dropout); });
  }
  void attention_backward(Tensor d_qkv, Tensor scratch, Tensor d_out, Tensor qkv, Tensor probs,
                          const AttentionDims& dims, DropoutSpec dropout) override {
    timed("attention_backward", attention_backward_flops(dims),
          [&] { inner_->attention_backward(d_qkv, scratch, d_out, qkv, probs, dims, dropout); });
  }  // Model FLOPs, as the materialised path: the backward's recomputed products are not credited.
  void attention_forward_fused(Tensor out, Tensor lse, Tensor qkv, IntTensor key_keep, const AttentionDims& dims,
                               DropoutSpec dropout) override {
    timed("attention_forward_fused", attention_forward_flops(dims),
          [&] { inner_->attention_forward_fused(out, lse, qkv, key_keep, dims, dropout); });
  }
  void attention_backward_fused(Tensor d_qkv, Tensor d_out, Tensor qkv, Tensor out, Tensor lse, IntTensor key_keep,
                                const AttentionDims& dims, DropoutSpec dropout) override {
    timed("attention_backward_fused", attention_backward_flops(dims),
          [&] { inner_->attention_backward_fused(d_qkv, d_out, qkv, out, lse, key_keep, dims, dropout); });
  }

  void embedding_forward(Tensor out, IntTensor ids, IntTensor type_ids, Tensor tok_table, Tensor pos_table,
                         Tensor type_table, int64_t seq) override {
    timed("embedding_forward", 0,
          [&] { inner_->embedding_forward(out, ids, type_ids, tok_table, pos_table, type_table, seq); });
  }
  void embedding_backward(Tensor d_tok, Tensor d_pos, Tensor d_type, Tensor d_out, IntTensor ids, IntTensor type_ids,
                          int64_t seq) override {
    timed("embedding_backward", 0,
          [&] { inner_->embedding_backward(d_tok, d_pos, d_type, d_out, ids, type_ids, seq); });
  }
  void gather_rows(Tensor out, Tensor in, IntTensor rows) override {
    timed("gather_rows", 0, [&] { inner_->gather_rows(out, in, rows); });
  }
  void scatter_add_rows(Tensor d_in, Tensor d_out, IntTensor rows) override {
    timed("scatter_add_rows", 0, [&] { inner_->scatter_add_rows(d_in, d_out, rows); });
  }
  void cross_entropy(Tensor losses, Tensor d_logits, Tensor logits, IntTensor labels, double grad_scale) override {
    timed("cross_entropy", 0, [&] { inner_->cross_entropy(losses, d_logits, logits, labels, grad_scale); });
  }
  void dropout_forward(Tensor out, Tensor in, DropoutSpec spec) override {
    timed("dropout_forward", 0, [&] { inner_->dropout_forward(out, in, spec); });
  }
  void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec spec) override {
    timed("dropout_backward", 0, [&] { inner_->dropout_backward(d_in, d_out, spec); });
  }
  void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec,
             Tensor param_copy) override {
    timed("adamw", 0, [&] { inner_->adamw(param, grad, m, v, spec, param_copy); });
  }

 private:
  std::unique_ptr<Backend> inner_;
  OpProfile& profile_;
  HostTimeline host_timeline_;
  DeviceTimeline* timeline_;
};

}  // namespace

std::unique_ptr<Backend> make_profiling_backend(std::unique_ptr<Backend> inner, OpProfile& profile) {
  return std::make_unique<ProfilingBackend>(std::move(inner), profile);
}

}  // namespace mics
