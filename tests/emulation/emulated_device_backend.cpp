#include "tests/emulation/emulated_device_backend.h"

#include <cuda_runtime.h>  // the emulator's (tests/emulation/nccl)

#include <array>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace mics {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("emulated device: ") + what + ": " + cudaGetErrorString(e));
}

class EmulatedDeviceBackend final : public Backend {
 public:
  explicit EmulatedDeviceBackend(EmulatedDeviceLatency latency) : cpu_(make_cpu_backend()), latency_(latency) {
    check(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, -5), "main stream");
    check(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, 0), "side stream");
    check(cudaEventCreateWithFlags(&side_start_, cudaEventDisableTiming), "event");
    for (cudaEvent_t& f : fences_) check(cudaEventCreateWithFlags(&f, cudaEventDisableTiming), "event");
  }
  ~EmulatedDeviceBackend() override {
    cudaStreamSynchronize(side_);
    cudaStreamSynchronize(stream_);
    if (error_) {  // a kernel's fault after the last synchronising call: said, not lost
      try {
        std::rethrow_exception(error_);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "emulated device: a kernel failed after the last synchronisation: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "emulated device: a kernel failed after the last synchronisation\n");
      }
    }
    for (cudaEvent_t f : fences_) cudaEventDestroy(f);
    cudaEventDestroy(side_start_);
    cudaStreamDestroy(side_);
    cudaStreamDestroy(stream_);
  }

  cudaStream_t stream() const { return on_side_ ? side_ : stream_; }  // where ops queue now
  cudaStream_t main_stream() const { return stream_; }

  const char* name() const override { return "emulated device"; }
  bool supports(DType dtype) const override { return cpu_->supports(dtype); }

  // ---- memory ----
  void* allocate(size_t bytes) override { return cpu_->allocate(bytes); }
  void release(void* ptr) noexcept override {
    cudaDeviceSynchronize();  // as cudaFree: nothing queued may still use it
    cpu_->release(ptr);
  }
  // Both ways as the CUDA backend: queued in stream order, then waited for (the host buffer
  // may be reused, or read, at once).
  void copy_from_host(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { copy(dst, src, bytes); }
  void synchronize() override {
    sync(side_);
    sync(stream_);
  }
  void reserve_scratch(const ScratchBounds& bounds) override {
    queue([this, bounds] { cpu_->reserve_scratch(bounds); });
    sync(stream());
  }

  // ---- side queue: a second stream, fences a ring of events (reused, as the CUDA backend's) ----
  bool has_side_queue() const override { return true; }
  int64_t run_on_side_queue(const std::function<void()>& work) override {
    check(cudaEventRecord(side_start_, stream_), "record");
    check(cudaStreamWaitEvent(side_, side_start_, 0), "wait");
    on_side_ = true;
    try {
      work();
    } catch (...) {
      on_side_ = false;
      throw;
    }
    on_side_ = false;
    const int64_t fence = next_fence_++;
    check(cudaEventRecord(fences_[static_cast<size_t>(fence) % fences_.size()], side_), "record");
    return fence;
  }
  void wait_for_fence(int64_t fence) override {
    if (fence < 0 || fence >= next_fence_) throw std::logic_error("wait_for_fence: no such fence");
    check(cudaStreamWaitEvent(stream_, fences_[static_cast<size_t>(fence) % fences_.size()], 0), "wait");
  }

  // ---- the ops: each queued on the current stream ----
  void fill_zero(Tensor x) override {
    queue([=, this] { cpu_->fill_zero(x); });
  }
  void cast(Tensor out, Tensor in) override {
    queue([=, this] { cpu_->cast(out, in); });
  }
  void add(Tensor out, Tensor a, Tensor b) override {
    queue([=, this] { cpu_->add(out, a, b); });
  }
  void scale(Tensor x, double alpha) override {
    queue([=, this] { cpu_->scale(x, alpha); });
  }
  double sum(Tensor x) override {
    return value([=, this] { return cpu_->sum(x); });
  }
  double sum_squares(Tensor x) override {
    return value([=, this] { return cpu_->sum_squares(x); });
  }
  void sum_squares_into(Tensor out, Tensor x) override {
    queue([=, this] { cpu_->sum_squares_into(out, x); });
  }
  int64_t count_nonfinite(Tensor x) override {
    return value([=, this] { return cpu_->count_nonfinite(x); });
  }
  void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) override {
    queue([=, this] { cpu_->linear_forward(out, in, weight, bias); });
  }
  void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor in, Tensor weight,
                       Accumulate acc_d_in, Accumulate acc_params) override {
    queue([=, this] { cpu_->linear_backward(d_in, d_weight, d_bias, d_out, in, weight, acc_d_in, acc_params); });
  }
  void gelu_forward(Tensor out, Tensor in, GeluKind kind) override {
    queue([=, this] { cpu_->gelu_forward(out, in, kind); });
  }
  void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind kind) override {
    queue([=, this] { cpu_->gelu_backward(d_in, d_out, in, kind); });
  }
  void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias, GeluKind kind) override {
    queue([=, this] { cpu_->linear_gelu_forward(act, pre, in, weight, bias, kind); });
  }
  void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor act, Tensor pre,
                            Tensor weight, GeluKind kind, Accumulate acc_params) override {
    queue([=, this] { cpu_->linear_gelu_backward(d_pre, d_weight, d_bias, d_out, act, pre, weight, kind, acc_params); });
  }
  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor in, Tensor gamma, Tensor beta,
                         float eps) override {
    queue([=, this] { cpu_->layernorm_forward(out, mean, rstd, in, gamma, beta, eps); });
  }
  void add_layernorm_forward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor gamma,
                             Tensor beta, float eps) override {
    queue([=, this] { cpu_->add_layernorm_forward(sum, out, mean, rstd, a, b, gamma, beta, eps); });
  }
  void layernorm_backward(Tensor d_in, Tensor d_gamma, Tensor d_beta, Tensor d_out, Tensor in, Tensor gamma,
                          Tensor mean, Tensor rstd, Accumulate acc_d_in, Accumulate acc_params) override {
    queue([=, this] { cpu_->layernorm_backward(d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd, acc_d_in, acc_params); });
  }
  void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor key_keep, const AttentionDims& dims,
                         DropoutSpec dropout) override {
    queue([=, this] { cpu_->attention_forward(out, probs, qkv, key_keep, dims, dropout); });
  }
  void attention_backward(Tensor d_qkv, Tensor scratch, Tensor d_out, Tensor qkv, Tensor probs,
                          const AttentionDims& dims, DropoutSpec dropout) override {
    queue([=, this] { cpu_->attention_backward(d_qkv, scratch, d_out, qkv, probs, dims, dropout); });
  }
  void attention_forward_fused(Tensor out, Tensor lse, Tensor qkv, IntTensor key_keep, const AttentionDims& dims,
                               DropoutSpec dropout) override {
    queue([=, this] { cpu_->attention_forward_fused(out, lse, qkv, key_keep, dims, dropout); });
  }
  void attention_backward_fused(Tensor d_qkv, Tensor d_out, Tensor qkv, Tensor out, Tensor lse, IntTensor key_keep,
                                const AttentionDims& dims, DropoutSpec dropout) override {
    queue([=, this] { cpu_->attention_backward_fused(d_qkv, d_out, qkv, out, lse, key_keep, dims, dropout); });
  }
  void embedding_forward(Tensor out, IntTensor ids, IntTensor type_ids, Tensor tok_table, Tensor pos_table,
                         Tensor type_table, int64_t seq) override {
    queue([=, this] { cpu_->embedding_forward(out, ids, type_ids, tok_table, pos_table, type_table, seq); });
  }
  void embedding_backward(Tensor d_tok, Tensor d_pos, Tensor d_type, Tensor d_out, IntTensor ids,
                          IntTensor type_ids, int64_t seq) override {
    queue([=, this] { cpu_->embedding_backward(d_tok, d_pos, d_type, d_out, ids, type_ids, seq); });
  }
  void gather_rows(Tensor out, Tensor in, IntTensor rows) override {
    queue([=, this] { cpu_->gather_rows(out, in, rows); });
  }
  void scatter_add_rows(Tensor d_in, Tensor d_out, IntTensor rows) override {
    queue([=, this] { cpu_->scatter_add_rows(d_in, d_out, rows); });
  }
  void cross_entropy(Tensor losses, Tensor d_logits, Tensor logits, IntTensor labels, double grad_scale) override {
    queue([=, this] { cpu_->cross_entropy(losses, d_logits, logits, labels, grad_scale); });
  }
  void dropout_forward(Tensor out, Tensor in, DropoutSpec spec) override {
    queue([=, this] { cpu_->dropout_forward(out, in, spec); });
  }
  void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec spec) override {
    queue([=, this] { cpu_->dropout_backward(d_in, d_out, spec); });
  }
  void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec, Tensor param_copy) override {
    queue([=, this] { cpu_->adamw(param, grad, m, v, spec, param_copy); });
  }

 private:
  // `kernel` on the current stream. An exception it throws on the device thread is kept and
  // thrown by the next synchronising call, as a CUDA backend reports a kernel's fault.
  template <class Kernel>
  void queue(Kernel kernel) {
    mics_emulated_launch_work(
        stream(),
        [this, kernel] {
          try {
            kernel();
          } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (!error_) error_ = std::current_exception();
          }
        },
        on_side_ ? latency_.side_us : latency_.main_us);
    check(cudaGetLastError(), "launch");  // as the CUDA backend's MICS_CUDA_CHECK_LAUNCH
  }
  template <class Reduction>
  auto value(Reduction reduction) -> decltype(reduction()) {
    auto result = std::make_shared<decltype(reduction())>();
    queue([result, reduction] { *result = reduction(); });
    sync(stream());
    return *result;
  }
  void copy(void* dst, const void* src, size_t bytes) {
    queue([=] { std::memcpy(dst, src, bytes); });
    sync(stream());
  }
  void sync(cudaStream_t s) {
    check(cudaStreamSynchronize(s), "synchronize");
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(error_mutex_);
      std::swap(error, error_);
    }
    if (error) std::rethrow_exception(error);
  }

  std::unique_ptr<Backend> cpu_;
  EmulatedDeviceLatency latency_;
  cudaStream_t stream_ = nullptr, side_ = nullptr;
  bool on_side_ = false;  // run_on_side_queue's work is queuing: ops go to side_
  cudaEvent_t side_start_ = nullptr;
  // Fewer than the CUDA backend's, so that fences are recorded again while still awaited
  // (a wait then holds for a later point of the side stream: later, still correct).
  std::array<cudaEvent_t, 3> fences_{};
  int64_t next_fence_ = 0;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace

std::unique_ptr<Backend> make_emulated_device_backend(EmulatedDeviceLatency latency) {
  return std::make_unique<EmulatedDeviceBackend>(latency);
}

void* emulated_device_stream(Backend& backend) {
  auto* device = dynamic_cast<EmulatedDeviceBackend*>(&backend);
  if (device == nullptr) throw std::invalid_argument("emulated_device_stream: not an emulated device backend");
  return device->main_stream();
}

}  // namespace mics
