// The CUDA backend: argument checks (the CPU backend's, plus dtype checks the CPU gets
// from Tensor::ptr<T>), device memory, and the orchestration of cuBLASLt GEMMs and the
// hand-written kernels (launch.h) on one stream. Plain C++; the kernels live in the .cu
// files.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/event_poll.h"
#include "kernels/cuda/gemm_lt.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/sm_partition.h"
#include "kernels/op_shapes.h"

namespace mics {

bool cuda_backend_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error for later calls
    return 0;
  }
  return count;
}

bool cuda_memory_info(int device, size_t& free_bytes, size_t& total_bytes) {
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const bool ok = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
  if (!ok) cudaGetLastError();
  cudaSetDevice(current);
  return ok;
}

int cuda_compute_capability(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return prop.major * 10 + prop.minor;
}

std::string cuda_device_pci_bus_id(int device) {
  char id[64] = {};
  if (cudaDeviceGetPCIBusId(id, static_cast<int>(sizeof id), device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return id;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "unknown";
  }
  return prop.name;
}

namespace {

using namespace mics::cuda;

bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The compute dtypes of this backend.
bool compute_dtype(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

void expect_compute_dtype(const char* op, const Tensor& t) {
  if (!compute_dtype(t.dtype))
    throw ShapeError(std::string(op) + ": the CUDA backend has no " + dtype_name(t.dtype));
}

// Every given tensor has the dtype of `first`, which is a compute dtype.
void expect_dtypes(const char* op, const Tensor& first, std::initializer_list<const Tensor*> rest) {
  expect_compute_dtype(op, first);
  for (const Tensor* t : rest)
    if (!t->empty()) expect_same_dtype(op, first, *t);
}

void expect_int_numel(const char* op, const char* arg, const IntTensor& t, int64_t n) {
  if (t.numel() != n)
    throw ShapeError(std::string(op) + ": " + arg + " has " + std::to_string(t.numel()) +
                     " entries, expected " + std::to_string(n));
}

char* at(const Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data) + offset * static_cast<int64_t>(dtype_size(t.dtype));
}

// A device buffer that grows to the largest size asked of it. The sizes follow from the
// model's shapes, so it grows in the first step and later steps reuse it (no allocation
// inside a steady-state step). Growing synchronises the stream: work queued on the old
// buffer finishes before it is freed.
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() { cudaFree(ptr_); }

  void* get(size_t bytes, cudaStream_t stream) {
    if (bytes > bytes_) {
      if (reserved_ && growths_++ == 0)
        spdlog::warn("a CUDA scratch buffer grew from {} to {} bytes inside a step: the model's reserve_scratch "
                     "bounds missed an op (correct, but it allocates and synchronises)", bytes_, bytes);
      MICS_CUDA_CHECK(cudaStreamSynchronize(stream));
      MICS_CUDA_CHECK(cudaFree(ptr_));
      ptr_ = nullptr;
      bytes_ = 0;
      MICS_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
      bytes_ = bytes;
    }
    return ptr_;
  }
  // Grows to `bytes` now; from then on, growing is counted (and logged once).
  void reserve(size_t bytes, cudaStream_t stream) {
    get(bytes, stream);
    reserved_ = true;
  }
  int64_t growths() const { return growths_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool reserved_ = false;
  int64_t growths_ = 0;
};

// cuBLASLt runs several times slower when a GEMM dimension is not a multiple of 16 bytes'
// worth of elements (seen on H200: the GPT-2 LM head, 50265 outputs, at 95 TFLOP/s against
// 640 for the layers, even with padded leading dimensions). linear_forward/backward pad
// such an output width n to padded_width(n) with zero weight rows (PaddedLinear below).
int64_t padded_width(int64_t n, DType t) {
  const int64_t per16 = 16 / static_cast<int64_t>(dtype_size(t));
  return (n + per16 - 1) / per16 * per16;
}

// CUDA events on the backend's stream, kept in a pool: a profiled step records two per op
// and reads them all at its end, then reuses them.
class EventTimeline final : public DeviceTimeline {
 public:
  explicit EventTimeline(cudaStream_t stream) : stream_(stream) {}
  EventTimeline(const EventTimeline&) = delete;
  EventTimeline& operator=(const EventTimeline&) = delete;
  ~EventTimeline() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  int64_t mark() override {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      MICS_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    MICS_CUDA_CHECK(cudaEventRecord(events_[used_], stream_));
    return static_cast<int64_t>(used_++);
  }
  double seconds_between(int64_t begin, int64_t end) override {
    if (begin < 0 || end < 0 || static_cast<size_t>(std::max(begin, end)) >= used_)
      throw std::logic_error("EventTimeline: mark " + std::to_string(std::max(begin, end)) + " was not recorded");
    MICS_CUDA_CHECK(cudaEventSynchronize(events_[static_cast<size_t>(end)]));
    float ms = 0;
    MICS_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[static_cast<size_t>(begin)], events_[static_cast<size_t>(end)]));
    return 1e-3 * ms;
  }
  void forget() override { used_ = 0; }
  const char* how() const override {
    return "ops timed by events on the device's stream, without synchronising; the remainder is time the device "
           "spent outside the ops (where the host falls behind, an op's time includes the device's wait for its "
           "launch)";
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaBackendOptions& options) : device_(device) {
    MICS_CUDA_CHECK(cudaSetDevice(device));
    // Asked once: the fused attention checks them on every call.
    MICS_CUDA_CHECK(cudaDeviceGetAttribute(&compute_major_, cudaDevAttrComputeCapabilityMajor, device));
    MICS_CUDA_CHECK(cudaDeviceGetAttribute(&shared_optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    int sms = 0;
    MICS_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    side_sms_ = std::min(std::max(options.side_queue_sms, 0), sms);
    side_chunked_ = options.side_queue_chunked;
    partition_ = SmPartition(sms, side_sms_, side_chunked_, options.partition_gemms);
    if (partition_.targets_gemms())
      spdlog::info("CUDA: the overlapped update holds {} of GPU {}'s {} SMs to its end; while it runs, the main "
                   "stream's GEMMs are planned for the other {} (cuBLASLt's SM count target)",
                   side_sms_, device, sms, sms - side_sms_);
    if (options.side_queue_sms > sms)
      spdlog::warn("'runtime.overlap_optimizer_sms' is {}, but GPU {} has {} SMs: the overlapped update may hold all "
                   "of them",
                   options.side_queue_sms, device, sms);
    // Blocking streams: they still order with the legacy default stream, so code that uses
    // the default stream (cudaMemcpy, say) sees this backend's work in order. The main
    // stream at the device's highest priority (as the NCCL streams), the side queue's at its
    // lowest: where both have blocks ready, the forward's go first and the optimizer's
    // update fills what they leave.
    int least = 0, greatest = 0;
    MICS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    MICS_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamDefault, greatest));
    try {
      MICS_CUDA_CHECK(cudaStreamCreateWithPriority(&side_, cudaStreamDefault, least));
      MICS_CUDA_CHECK(cudaEventCreateWithFlags(&side_start_, cudaEventDisableTiming));
      // All at once: created lazily, the ring would be creating events inside steps for
      // kFences / layers steps.
      for (cudaEvent_t& fence : fences_) MICS_CUDA_CHECK(cudaEventCreateWithFlags(&fence, cudaEventDisableTiming));
      MICS_CUDA_CHECK(cudaMalloc(&scratch_, kScratchBytes));
      MICS_CUDA_CHECK(cudaMemsetAsync(scratch_, 0, kScratchBytes, stream_));
      gemm_ = std::make_unique<GemmLt>(stream_, options.gemm_workspace_bytes, options.allow_tf32, options.gemm_autotune);
      if (options.weight_grad_stream) {
        MICS_CUDA_CHECK(cudaStreamCreateWithPriority(&grad_stream_, cudaStreamDefault, greatest));
        MICS_CUDA_CHECK(cudaEventCreateWithFlags(&grad_fork_, cudaEventDisableTiming));
        MICS_CUDA_CHECK(cudaEventCreateWithFlags(&grad_join_, cudaEventDisableTiming));
        grad_gemm_ = std::make_unique<GemmLt>(grad_stream_, options.gemm_workspace_bytes, options.allow_tf32,
                                              options.gemm_autotune);
      }
      cudnn_fallback_ = options.cudnn_attention_fallback;
      if (options.cudnn_attention) {
        try {
          using Backward = CudnnAttention::Backward;
          cudnn_ = std::make_unique<CudnnAttention>(stream_, !options.cudnn_deterministic ? Backward::fast
                                                             : cudnn_fallback_            ? Backward::deterministic_only
                                                                                          : Backward::deterministic_else_fast);
        } catch (const CudaError&) {
          throw;  // the device's fault, not cuDNN's refusal
        } catch (const std::exception& e) {
          if (!cudnn_fallback_) throw;
          fall_back_from_cudnn(e.what());
        }
      }
      MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    } catch (...) {
      grad_gemm_.reset();
      gemm_.reset();
      if (grad_join_ != nullptr) cudaEventDestroy(grad_join_);
      if (grad_fork_ != nullptr) cudaEventDestroy(grad_fork_);
      if (grad_stream_ != nullptr) cudaStreamDestroy(grad_stream_);
      if (scratch_ != nullptr) cudaFree(scratch_);
      for (cudaEvent_t fence : fences_)
        if (fence != nullptr) cudaEventDestroy(fence);
      if (side_start_ != nullptr) cudaEventDestroy(side_start_);
      if (side_ != nullptr) cudaStreamDestroy(side_);
      cudaStreamDestroy(stream_);
      throw;
    }
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(side_);  // errors here cannot be reported
    if (grad_stream_ != nullptr) cudaStreamSynchronize(grad_stream_);
    cudaStreamSynchronize(stream_);
    grad_gemm_.reset();
    gemm_.reset();
    cudnn_.reset();
    timeline_.reset();
    cudaFree(scratch_);
    for (cudaEvent_t e : fences_) cudaEventDestroy(e);
    for (const auto& pair : wait_timers_)
      for (cudaEvent_t e : pair) cudaEventDestroy(e);
    cudaEventDestroy(side_start_);
    if (grad_stream_ != nullptr) {
      cudaEventDestroy(grad_fork_);
      cudaEventDestroy(grad_join_);
      cudaStreamDestroy(grad_stream_);
    }
    cudaStreamDestroy(side_);
    cudaStreamDestroy(stream_);
  }

  cudaStream_t stream() const { return stream_; }
  DeviceTimeline* timeline() override {
    // The main stream, even if asked while run_on_side_queue has the streams swapped.
    if (timeline_ == nullptr) timeline_ = std::make_unique<EventTimeline>(on_side_ ? side_ : stream_);
    return timeline_.get();
  }

  const char* name() const override { return "cuda"; }
  bool supports(DType dtype) const override { return compute_dtype(dtype); }

  // ---- memory ----
  void* allocate(size_t bytes) override {
    void* ptr = nullptr;
    MICS_CUDA_CHECK(cudaMalloc(&ptr, bytes));
    return ptr;
  }
  void release(void* ptr) noexcept override {
    if (ptr == nullptr) return;
    // cudaFree synchronises the device; an error (a context already broken) is reported
    // but cannot be thrown from here.
    const cudaError_t err = cudaFree(ptr);
    if (err != cudaSuccess)
      std::fprintf(stderr, "mics cuda: cudaFree failed: %s\n", cudaGetErrorString(err));
  }
  void* allocate_host(size_t bytes) override {
    void* ptr = nullptr;
    MICS_CUDA_CHECK(cudaMallocHost(&ptr, bytes));
    return ptr;
  }
  void release_host(void* ptr) noexcept override {
    if (ptr == nullptr) return;
    const cudaError_t err = cudaFreeHost(ptr);
    if (err != cudaSuccess)
      std::fprintf(stderr, "mics cuda: cudaFreeHost failed: %s\n", cudaGetErrorString(err));
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    MICS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may be reused at once
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    MICS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
    MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    check_device_errors();
  }
  void synchronize() override {
    MICS_CUDA_CHECK(cudaStreamSynchronize(side_));
    partition_.synchronized();  // whatever the side stream held is done
    MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    check_device_errors();
  }

  // ---- side queue: a second stream ----
  bool has_side_queue() const override { return true; }
  int64_t run_on_side_queue(const std::function<void()>& work) override {
    // Behind everything queued so far on the main stream (the gradients the update reads).
    MICS_CUDA_CHECK(cudaEventRecord(side_start_, stream_));
    MICS_CUDA_CHECK(cudaStreamWaitEvent(side_, side_start_, 0));
    partition_.side_work_begins();
    // The ops `work` calls queue on stream_: it names the side stream until they return.
    struct OnSide {
      cudaStream_t& a;
      cudaStream_t& b;
      bool& flag;
      OnSide(cudaStream_t& x, cudaStream_t& y, bool& on) : a(x), b(y), flag(on) {
        std::swap(a, b);
        flag = true;
      }
      ~OnSide() {
        std::swap(a, b);
        flag = false;
      }
    };
    {
      OnSide on_side(stream_, side_, on_side_);
      work();
    }
    // Fences reuse kFences events in turn: waiting on a fence whose event was recorded again
    // since waits for a later point of the same stream, later but still correct.
    const int64_t fence = next_fence_;
    MICS_CUDA_CHECK(cudaEventRecord(fences_[static_cast<size_t>(fence % kFences)], side_));
    ++next_fence_;
    partition_.side_work_fenced(fence);
    return fence;
  }
  // Each wait between two timing events on the main stream: their interval is how long
  // the stream stood at the wait (take_fence_wait_s).
  void wait_for_fence(int64_t fence) override {
    if (fence < 0 || fence >= next_fence_) throw std::logic_error("wait_for_fence: no such fence");
    if (wait_timers_used_ == wait_timers_.size()) {  // grows in the first step, then reused
      std::array<cudaEvent_t, 2> pair{};
      MICS_CUDA_CHECK(cudaEventCreate(&pair[0]));
      const cudaError_t second = cudaEventCreate(&pair[1]);
      if (second != cudaSuccess) cudaEventDestroy(pair[0]);
      MICS_CUDA_CHECK(second);
      wait_timers_.push_back(pair);
    }
    const std::array<cudaEvent_t, 2>& timer = wait_timers_[wait_timers_used_];
    MICS_CUDA_CHECK(cudaEventRecord(timer[0], stream_));
    MICS_CUDA_CHECK(cudaStreamWaitEvent(stream_, fences_[static_cast<size_t>(fence % kFences)], 0));
    MICS_CUDA_CHECK(cudaEventRecord(timer[1], stream_));
    ++wait_timers_used_;  // only a pair recorded whole is read by take_fence_wait_s
    partition_.main_waits_for(fence);
  }
  double take_fence_wait_s() override {
    double ms_total = 0;
    for (size_t i = 0; i < wait_timers_used_; ++i) {
      MICS_CUDA_CHECK(cudaEventSynchronize(wait_timers_[i][1]));  // (passed already, as the caller says)
      float ms = 0;
      MICS_CUDA_CHECK(cudaEventElapsedTime(&ms, wait_timers_[i][0], wait_timers_[i][1]));
      ms_total += ms;
    }
    wait_timers_used_ = 0;
    return ms_total * 1e-3;
  }

  // ---- element-wise ----
  void fill_zero(Tensor x) override {
    if (x.bytes() == 0) return;
    MICS_CUDA_CHECK(cudaMemsetAsync(x.data, 0, x.bytes(), stream_));  // 0 bits: +0 in every dtype
  }

  void cast(Tensor out, Tensor in) override {
    expect_numel("cast", "out", out, in.numel());
    expect_compute_dtype("cast", out);
    expect_compute_dtype("cast", in);
    if (out.dtype == in.dtype) {
      if (out.data != in.data && in.bytes() > 0)
        MICS_CUDA_CHECK(
            cudaMemcpyAsync(out.data, in.data, in.bytes(), cudaMemcpyDeviceToDevice, stream_));
      return;
    }
    launch_cast(out.dtype, out.data, in.dtype, in.data, in.numel(), stream_);
  }

  // Unlike the CPU, a and b may have any compute dtypes: each is converted to fp32, added,
  // and rounded once to out's dtype (bf16 gradients into an fp32 accumulator, say).
  void add(Tensor out, Tensor a, Tensor b) override {
    expect_numel("add", "a", a, out.numel());
    expect_numel("add", "b", b, out.numel());
    expect_compute_dtype("add", out);
    expect_compute_dtype("add", a);
    expect_compute_dtype("add", b);
    launch_add(out.dtype, out.data, a.dtype, a.data, b.dtype, b.data, out.numel(), stream_);
  }

  void scale(Tensor x, double alpha) override {
    expect_compute_dtype("scale", x);
    launch_scale(x.dtype, x.data, x.numel(), alpha, stream_);
  }

  double sum(Tensor x) override {
    expect_compute_dtype("sum", x);
    const double v = device_sum(x.dtype, x.data, x.numel(), false, partials(), result(), stream_);
    check_device_errors();
    return v;
  }
  double sum_squares(Tensor x) override {
    expect_compute_dtype("sum_squares", x);
    const double v = device_sum(x.dtype, x.data, x.numel(), true, partials(), result(), stream_);
    check_device_errors();
    return v;
  }
  void sum_squares_into(Tensor out, Tensor x) override {
    expect_f64_scalar("sum_squares_into", out);
    expect_compute_dtype("sum_squares_into", x);
    queue_device_sum(x.dtype, x.data, x.numel(), true, queued_partials(), static_cast<double*>(out.data), stream_);
  }
  int64_t count_nonfinite(Tensor x) override {
    expect_compute_dtype("count_nonfinite", x);
    const int64_t v = device_count_nonfinite(x.dtype, x.data, x.numel(), count_partials(),
                                             count_result(), stream_);
    check_device_errors();
    return v;
  }

  // ---- dense layers ----
  // out[m,n] = in[m,k] @ weight[n,k]^T (+ bias[n]).
  static GemmArgs linear_gemm(Tensor out, Tensor in, Tensor weight, Tensor bias, int64_t m, int64_t n, int64_t k) {
    GemmArgs g;
    g.dtype = out.dtype;
    g.m = m, g.n = n, g.k = k;
    g.a = in.data, g.lda = k;
    g.b = weight.data, g.ldb = k, g.trans_b = true;
    g.c = out.data, g.ldc = n;
    g.bias = bias.empty() ? nullptr : bias.data;
    return g;
  }

  void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) override {
    const char* op = "linear_forward";
    const auto [m, n, k] = linear_forward_dims(out, in, weight, bias);
    expect_dtypes(op, out, {&in, &weight, &bias});
    GemmArgs g = linear_gemm(out, in, weight, bias, m, n, k);
    const int64_t np = padded_width(n, out.dtype);
    if (np == n || m == 0) {
      main_gemm().run(g);
      return;
    }
    // out_padded[m, np] = in @ weight_padded^T (+ bias_padded), then its first n columns.
    const size_t es = dtype_size(out.dtype);
    g.n = np;
    g.b = padded_rows(pad_weight_, weight.data, n, np, k, es);
    if (!bias.empty()) g.bias = padded_rows(pad_bias_, bias.data, n, np, 1, es);
    g.c = pad_rows_.get(static_cast<size_t>(m * np) * es, main_queue()), g.ldc = np;
    main_gemm().run(g);
    MICS_CUDA_CHECK(cudaMemcpy2DAsync(out.data, n * es, g.c, np * es, n * es, m,
                                      cudaMemcpyDeviceToDevice, stream_));
  }

  void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor in,
                       Tensor weight, Accumulate acc, Accumulate acc_params) override {
    const char* op = "linear_backward";
    const auto [m, n, k] = linear_backward_dims(d_in, d_weight, d_bias, d_out, in, weight);
    expect_dtypes(op, d_out, {&in, &weight, &d_weight, &d_in, &d_bias});
    const DType t = d_out.dtype;
    const size_t es = dtype_size(t);
    // An output width cuBLASLt handles slowly: d_out staged at the padded width (zero
    // columns), the weight padded with zero rows for d_in's product over that width, and
    // d_weight's product at the padded width too, into the padded weight's scratch once
    // d_in's product has read it, then its first n rows copied (or added) into place. (The
    // unpadded d_weight product, n = 50265 rows of D, is the shape cuBLASLt ran at a seventh
    // of its speed in the forward even with padded leading dimensions, on the H200; the copy
    // costs n*k elements read and written.)
    const bool add_params = acc_params == Accumulate::yes;
    const int64_t np = m > 0 ? padded_width(n, t) : n;
    const void* rows = d_out.data;
    const void* w = weight.data;
    if (np != n) {
      void* staged = pad_rows_.get(static_cast<size_t>(m * np) * es, main_queue());
      MICS_CUDA_CHECK(cudaMemcpy2DAsync(staged, np * es, d_out.data, n * es, n * es, m,
                                        cudaMemcpyDeviceToDevice, stream_));
      MICS_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(staged) + n * es, np * es, 0,
                                        (np - n) * es, m, stream_));
      rows = staged;
      w = padded_rows(pad_weight_, weight.data, n, np, k, es);
    }
    // The weight gradient on a stream of its own beside d_in's product where asked
    // (runtime.overlap_weight_grads): the two may fill each other's last partial wave of
    // tiles. Not with padding, where d_weight's product reuses the padded weight's scratch
    // that d_in's product reads.
    const bool apart = grad_gemm_ != nullptr && np == n && !d_in.empty() && m > 0;
    WeightGradientJoin join =
        apart ? fork_weight_gradients(t, m, n, k, d_out.data, in.data, d_weight, d_bias, add_params)
              : WeightGradientJoin{};
    if (!d_in.empty()) {  // d_in[m,k] (= or +=) d_out[m,n] @ weight[n,k]
      GemmArgs g;
      g.dtype = t;
      g.m = m, g.n = k, g.k = np;
      g.a = rows, g.lda = np;
      g.b = w, g.ldb = k;
      g.c = d_in.data, g.ldc = k;
      g.beta = acc == Accumulate::yes ? 1.0f : 0.0f;
      main_gemm().run(g);
    }
    if (apart) {
      join.now();
    } else if (np == n) {
      weight_gradients(t, m, n, k, d_out.data, in.data, d_weight, d_bias, add_params, stream_, main_gemm());
    } else {  // d_weight[n,k] += (or =) d_out^T[n,m] @ in[m,k] at the padded width, then its first n rows
      GemmArgs g;
      g.dtype = t;
      g.m = np, g.n = k, g.k = m;
      g.a = rows, g.lda = np, g.trans_a = true;
      g.b = in.data, g.ldb = k;
      g.c = pad_weight_.get(static_cast<size_t>(np * k) * es, main_queue()), g.ldc = k;
      main_gemm().run(g);
      if (add_params)
        launch_add(t, d_weight.data, t, d_weight.data, t, g.c, n * k, stream_);
      else
        MICS_CUDA_CHECK(cudaMemcpyAsync(d_weight.data, g.c, static_cast<size_t>(n * k) * es,
                                        cudaMemcpyDeviceToDevice, stream_));
      if (!d_bias.empty())
        launch_column_sums(t, d_bias.data, d_out.data, m, n, add_params, column_partials(m, n, 1), stream_);
    }
  }

  // d_weight[n,k] += (or =) d_out^T[n,m] @ in[m,k], and d_bias[n] (unless empty) the column
  // sums of d_out[m,n], queued on `s` through `gemm`; n unpadded. Half precision takes the
  // bias gradient from the same GEMM's BGRADB epilogue, in the dtype, then adds it (or copies
  // it into place); fp32 keeps the column-sum kernel (the CPU's order).
  void weight_gradients(DType t, int64_t m, int64_t n, int64_t k, const void* d_out, const void* in, Tensor d_weight,
                        Tensor d_bias, bool add_params, cudaStream_t s, GemmLt& gemm) {
    GemmArgs g;
    g.dtype = t;
    g.m = n, g.n = k, g.k = m;
    g.a = d_out, g.lda = n, g.trans_a = true;
    g.b = in, g.ldb = k;
    g.c = d_weight.data, g.ldc = k;
    g.beta = add_params ? 1.0f : 0.0f;
    bool bias_done = d_bias.empty();
    if (!bias_done && t != DType::f32 && m > 0 && k > 0) {
      GemmArgs with_bias_grad = g;
      with_bias_grad.bias_grad = bias_grad_.get(static_cast<size_t>(n) * dtype_size(t), main_queue());
      if (gemm.try_run(with_bias_grad)) {
        if (add_params)
          launch_add(t, d_bias.data, t, d_bias.data, t, with_bias_grad.bias_grad, n, s);
        else
          MICS_CUDA_CHECK(cudaMemcpyAsync(d_bias.data, with_bias_grad.bias_grad, static_cast<size_t>(n) * dtype_size(t),
                                          cudaMemcpyDeviceToDevice, s));
        return;
      }
    }
    gemm.run(g);
    if (!bias_done) launch_column_sums(t, d_bias.data, d_out, m, n, add_params, column_partials(m, n, 1), s);
  }

  // The main stream's wait for the weight gradients' stream: now() before the op returns
  // (nothing after it may see them unfinished, and the scratch they use is free again), or,
  // should the op throw first, when it leaves scope. Empty: nothing forked.
  class WeightGradientJoin {
   public:
    WeightGradientJoin() = default;
    WeightGradientJoin(cudaStream_t main, cudaEvent_t done) : main_(main), done_(done) {}
    WeightGradientJoin(WeightGradientJoin&& o) noexcept : main_(o.main_), done_(std::exchange(o.done_, nullptr)) {}
    WeightGradientJoin& operator=(WeightGradientJoin&&) = delete;
    ~WeightGradientJoin() {
      if (done_ != nullptr) cudaStreamWaitEvent(main_, done_, 0);  // (an error here cannot be reported)
    }
    void now() {
      if (done_ != nullptr) MICS_CUDA_CHECK(cudaStreamWaitEvent(main_, std::exchange(done_, nullptr), 0));
    }

   private:
    cudaStream_t main_ = nullptr;
    cudaEvent_t done_ = nullptr;
  };

  // weight_gradients on the weight-gradient stream, behind everything queued on the main
  // stream so far.
  WeightGradientJoin fork_weight_gradients(DType t, int64_t m, int64_t n, int64_t k, const void* d_out,
                                           const void* in, Tensor d_weight, Tensor d_bias, bool add_params) {
    MICS_CUDA_CHECK(cudaEventRecord(grad_fork_, main_queue()));
    MICS_CUDA_CHECK(cudaStreamWaitEvent(grad_stream_, grad_fork_, 0));
    ++weight_grad_forks_;
    try {
      grad_gemm_->set_sm_count_target(gemm_sms());
      weight_gradients(t, m, n, k, d_out, in, d_weight, d_bias, add_params, grad_stream_, *grad_gemm_);
    } catch (...) {  // what was queued there is joined all the same (errors here cannot be reported)
      if (cudaEventRecord(grad_join_, grad_stream_) == cudaSuccess) cudaStreamWaitEvent(stream_, grad_join_, 0);
      throw;
    }
    MICS_CUDA_CHECK(cudaEventRecord(grad_join_, grad_stream_));
    return WeightGradientJoin(stream_, grad_join_);
  }

  void gelu_forward(Tensor out, Tensor in, GeluKind kind) override {
    expect_numel("gelu_forward", "in", in, out.numel());
    expect_dtypes("gelu_forward", out, {&in});
    launch_gelu_forward(out.dtype, out.data, in.data, out.numel(), kind, stream_);
  }

  void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind kind) override {
    expect_numel("gelu_backward", "d_out", d_out, d_in.numel());
    expect_numel("gelu_backward", "in", in, d_in.numel());
    expect_dtypes("gelu_backward", d_in, {&d_out, &in});
    launch_gelu_backward(d_in.dtype, d_in.data, d_out.data, in.data, d_in.numel(), kind, stream_);
  }

  // mean/rstd: the op's dtype (as the interface says) or fp32 (more accurate statistics
  // for half-precision models).
  void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor in, Tensor gamma,
                         Tensor beta, float eps) override {
    const char* op = "layernorm_forward";
    const auto [m, c] = layernorm_forward_dims(out, mean, rstd, in, gamma, beta);
    expect_dtypes(op, out, {&in, &gamma, &beta});
    expect_same_dtype(op, mean, rstd);
    launch_layernorm_forward(out.dtype, mean.dtype, out.data, mean.data, rstd.data, in.data,
                             gamma.data, beta.data, m, c, eps, stream_);
  }

  // cuBLASLt's GELU epilogues compute the tanh form. They run in half precision, where the
  // output rounding hides how they evaluate it, on widths the GEMMs take unpadded; fp32
  // keeps the separate kernels, the CPU backend's formulas.
  bool gelu_epilogue(DType t, GeluKind kind, int64_t width, const void* aux) const {
    return kind == GeluKind::tanh && t != DType::f32 && padded_width(width, t) == width &&
           is_aligned16(aux);
  }

  void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias, GeluKind kind) override {
    const char* op = "linear_gelu_forward";
    const auto [m, n, k] = linear_forward_dims(pre, in, weight, bias);
    expect_shape(op, "act", act, pre.shape);
    expect_dtypes(op, pre, {&act, &in, &weight, &bias});
    GemmArgs g = linear_gemm(act, in, weight, bias, m, n, k);  // act = gelu(pre), pre = in @ weight^T + bias
    g.gelu = GemmArgs::Gelu::gelu_aux, g.aux = pre.data;
    if (m == 0 || k == 0 || !gelu_epilogue(pre.dtype, kind, n, pre.data) || !main_gemm().try_run(g)) {
      linear_forward(pre, in, weight, bias);
      gelu_forward(act, pre, kind);
    }
  }

  void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out, Tensor act, Tensor pre,
                            Tensor weight, GeluKind kind, Accumulate acc_params) override {
    const char* op = "linear_gelu_backward";
    const auto [m, n, k] = linear_backward_dims(d_pre, d_weight, d_bias, d_out, act, weight);
    expect_shape(op, "d_pre", d_pre, act.shape);
    expect_shape(op, "pre", pre, act.shape);
    expect_dtypes(op, d_out, {&d_pre, &pre, &act, &weight, &d_weight, &d_bias});
    const DType t = d_out.dtype;
    GemmArgs g;  // d_pre[m,k] = (d_out[m,n] @ weight[n,k]) * gelu'(pre)
    g.dtype = t;
    g.m = m, g.n = k, g.k = n;
    g.a = d_out.data, g.lda = n;
    g.b = weight.data, g.ldb = k;
    g.c = d_pre.data, g.ldc = k;
    g.gelu = GemmArgs::Gelu::dgelu, g.aux = pre.data;
    if (m == 0 || n == 0 || padded_width(n, t) != n || !gelu_epilogue(t, kind, k, pre.data)) {
      linear_backward(d_pre, d_weight, d_bias, d_out, act, weight, Accumulate::no, acc_params);
      gelu_backward(d_pre, d_pre, pre, kind);
      return;
    }
    const bool add_params = acc_params == Accumulate::yes;
    WeightGradientJoin join =
        grad_gemm_ != nullptr ? fork_weight_gradients(t, m, n, k, d_out.data, act.data, d_weight, d_bias, add_params)
                              : WeightGradientJoin{};
    const bool declined = !main_gemm().try_run(g);
    if (declined) {  // cuBLASLt declined the epilogue: the product here, the derivative below
      g.gelu = GemmArgs::Gelu::none, g.aux = nullptr;
      main_gemm().run(g);
    }
    if (grad_gemm_ != nullptr)
      join.now();
    else
      weight_gradients(t, m, n, k, d_out.data, act.data, d_weight, d_bias, add_params, stream_, main_gemm());
    if (declined) gelu_backward(d_pre, d_pre, pre, kind);
  }

  void add_layernorm_forward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b,
                             Tensor gamma, Tensor beta, float eps) override {
    const char* op = "add_layernorm_forward";
    const auto [m, c] = add_layernorm_forward_dims(sum, out, mean, rstd, a, b, gamma, beta);
    expect_dtypes(op, out, {&sum, &a, &b, &gamma, &beta});
    expect_same_dtype(op, mean, rstd);
    launch_add_layernorm_forward(out.dtype, mean.dtype, sum.data, out.data, mean.data, rstd.data, a.data,
                                 b.data, gamma.data, beta.data, m, c, eps, stream_);
  }

  void layernorm_backward(Tensor d_in, Tensor d_gamma, Tensor d_beta, Tensor d_out, Tensor in,
                          Tensor gamma, Tensor mean, Tensor rstd, Accumulate acc, Accumulate acc_params) override {
    const char* op = "layernorm_backward";
    const auto [m, c] = layernorm_backward_dims(d_in, d_gamma, d_beta, d_out, in, gamma, mean, rstd);
    expect_dtypes(op, d_in, {&d_gamma, &d_beta, &d_out, &in, &gamma});
    expect_same_dtype(op, mean, rstd);
    launch_layernorm_backward(d_in.dtype, mean.dtype, d_in.data, d_gamma.data, d_beta.data,
                              d_out.data, in.data, gamma.data, mean.data, rstd.data, m, c,
                              acc == Accumulate::yes, acc_params == Accumulate::yes, column_partials(m, c, 2), stream_);
  }

  // ---- attention ----
  // The (batch, head) pairs as strided GEMM batches. q, k, v of pair (b, h) start at
  // qkv + b*T*3C + h*D (+ C for k, + 2C for v), its probabilities at (b*H + h)*T*T, its
  // output at b*T*C + h*D: affine in h for fixed b and in b for fixed h, but not in b*H + h.
  // So one batched GEMM per value of the smaller dimension, batching over the larger.
  struct PairBatches {
    int64_t outer, inner;
    int64_t qkv_base, probs_base, out_base;        // offsets per outer step
    int64_t qkv_stride, probs_stride, out_stride;  // per inner (batch) step
  };
  static PairBatches pair_batches(const AttentionDims& d) {
    const int64_t T = d.seq, H = d.heads, D = d.head_dim, C = H * D;
    if (H >= d.batch) return {d.batch, H, T * 3 * C, H * T * T, T * C, D, T * T, D};
    return {H, d.batch, D, T * T, D, T * 3 * C, H * T * T, T * C};
  }

  // scores of every pair = alpha * Q K^T, into probs.
  void attention_scores(const Tensor& probs, const Tensor& qkv, const AttentionDims& d,
                        float alpha) {
    const int64_t T = d.seq, D = d.head_dim, C = d.heads * D;
    const PairBatches pb = pair_batches(d);
    for (int64_t o = 0; o < pb.outer; ++o) {
      GemmArgs g;
      g.dtype = qkv.dtype;
      g.m = T, g.n = T, g.k = D;
      g.a = at(qkv, o * pb.qkv_base), g.lda = 3 * C, g.stride_a = pb.qkv_stride;
      g.b = at(qkv, o * pb.qkv_base + C), g.ldb = 3 * C, g.stride_b = pb.qkv_stride;
      g.trans_b = true;
      g.c = at(probs, o * pb.probs_base), g.ldc = T, g.stride_c = pb.probs_stride;
      g.batch = pb.inner;
      g.alpha = alpha;
      main_gemm().run(g);
    }
  }

  void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor key_keep,
                         const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_forward";
    check_attention_shapes(op, qkv, probs, out, key_keep, d);
    expect_dtypes(op, out, {&probs, &qkv});
    const int64_t T = d.seq, D = d.head_dim, C = d.heads * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const PairBatches pb = pair_batches(d);
    const float drop = dropout.enabled() ? dropout.prob : 0.0f;

    attention_scores(probs, qkv, d, scale);
    // With dropout, probs first holds the dropped probabilities for out = P' V; then the
    // scores and softmax are computed again to leave P itself in probs, as the interface
    // asks (no extra T x T buffer exists in the forward).
    launch_attention_softmax(probs.dtype, probs.data, key_keep.data, d.batch, d.heads, T,
                             d.causal, drop, dropout.seed, stream_);
    for (int64_t o = 0; o < pb.outer; ++o) {  // out = P V
      GemmArgs g;
      g.dtype = out.dtype;
      g.m = T, g.n = D, g.k = T;
      g.a = at(probs, o * pb.probs_base), g.lda = T, g.stride_a = pb.probs_stride;
      g.b = at(qkv, o * pb.qkv_base + 2 * C), g.ldb = 3 * C, g.stride_b = pb.qkv_stride;
      g.c = at(out, o * pb.out_base), g.ldc = C, g.stride_c = pb.out_stride;
      g.batch = pb.inner;
      main_gemm().run(g);
    }
    if (drop > 0.0f) {
      attention_scores(probs, qkv, d, scale);
      launch_attention_softmax(probs.dtype, probs.data, key_keep.data, d.batch, d.heads, T,
                               d.causal, 0.0f, 0, stream_);
    }
  }

  void attention_backward(Tensor d_qkv, Tensor scratch, Tensor d_out, Tensor qkv, Tensor probs,
                          const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_backward";
    check_attention_shapes(op, qkv, probs, d_out, IntTensor{}, d);
    expect_shape(op, "d_qkv", d_qkv, qkv.shape);
    expect_shape(op, "scratch", scratch, probs.shape);
    expect_dtypes(op, d_qkv, {&scratch, &d_out, &qkv, &probs});
    const int64_t T = d.seq, D = d.head_dim, C = d.heads * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const PairBatches pb = pair_batches(d);
    const float drop = dropout.enabled() ? dropout.prob : 0.0f;
    const DType t = d_qkv.dtype;

    // dV = P'^T dO, P' = dropout(P) staged in scratch (the mask index is the flat index
    // of probs, as in the forward).
    const Tensor& p_used = drop > 0.0f ? scratch : probs;
    if (drop > 0.0f) launch_dropout(t, scratch.data, probs.data, probs.numel(), drop, dropout.seed, stream_);
    for (int64_t o = 0; o < pb.outer; ++o) {
      GemmArgs g;
      g.dtype = t;
      g.m = T, g.n = D, g.k = T;
      g.a = at(p_used, o * pb.probs_base), g.lda = T, g.stride_a = pb.probs_stride;
      g.trans_a = true;
      g.b = at(d_out, o * pb.out_base), g.ldb = C, g.stride_b = pb.out_stride;
      g.c = at(d_qkv, o * pb.qkv_base + 2 * C), g.ldc = 3 * C, g.stride_c = pb.qkv_stride;
      g.batch = pb.inner;
      main_gemm().run(g);
    }
    for (int64_t o = 0; o < pb.outer; ++o) {  // dP' = dO V^T into scratch
      GemmArgs g;
      g.dtype = t;
      g.m = T, g.n = T, g.k = D;
      g.a = at(d_out, o * pb.out_base), g.lda = C, g.stride_a = pb.out_stride;
      g.b = at(qkv, o * pb.qkv_base + 2 * C), g.ldb = 3 * C, g.stride_b = pb.qkv_stride;
      g.trans_b = true;
      g.c = at(scratch, o * pb.probs_base), g.ldc = T, g.stride_c = pb.probs_stride;
      g.batch = pb.inner;
      main_gemm().run(g);
    }
    // dS = scale * P (dP - sum P dP), dP the masked dP', in place in scratch.
    launch_attention_softmax_backward(t, scratch.data, probs.data, d.batch * d.heads * T, T, scale,
                                      drop, dropout.seed, stream_);
    for (int64_t o = 0; o < pb.outer; ++o) {
      GemmArgs g;  // dQ = dS K
      g.dtype = t;
      g.m = T, g.n = D, g.k = T;
      g.a = at(scratch, o * pb.probs_base), g.lda = T, g.stride_a = pb.probs_stride;
      g.b = at(qkv, o * pb.qkv_base + C), g.ldb = 3 * C, g.stride_b = pb.qkv_stride;
      g.c = at(d_qkv, o * pb.qkv_base), g.ldc = 3 * C, g.stride_c = pb.qkv_stride;
      g.batch = pb.inner;
      main_gemm().run(g);
      // dK = dS^T Q
      g.trans_a = true;
      g.b = at(qkv, o * pb.qkv_base);
      g.c = at(d_qkv, o * pb.qkv_base + C);
      main_gemm().run(g);
    }
  }

  // The fused kernels' own limits (ours, or cuDNN's), after the shared shape checks.
  // `views`: the op's other [B,T,...] tensors (the backward's d_qkv and d_out).
  void check_fused_attention(const char* op, const Tensor& qkv, const Tensor& lse, const Tensor& out,
                             const IntTensor& key_keep, const AttentionDims& d, DropoutSpec dropout,
                             std::initializer_list<const Tensor*> views = {}) {
    check_fused_attention_shapes(op, qkv, lse, out, key_keep, d);
    if (lse.dtype != DType::f32) throw ShapeError(std::string(op) + ": lse must be fp32, not " + dtype_name(lse.dtype));
    // Both paths read and write these in 16-byte vectors (cuDNN's graphs declare it).
    bool aligned = is_aligned16(qkv.data) && is_aligned16(out.data);
    for (const Tensor* v : views) aligned = aligned && is_aligned16(v->data);
    if (!aligned)
      throw ShapeError(std::string(op) + ": the fused attention needs its qkv, out and gradient tensors 16-byte "
                       "aligned (set 'runtime.attention' to \"materialized\")");
    if (cudnn_ != nullptr) {
      auto refuse = [op](const std::string& why) {
        throw ShapeError(std::string(op) + " through cuDNN (runtime.attention \"cudnn\") " + why);
      };
      if (qkv.dtype != DType::bf16 && qkv.dtype != DType::f16)
        refuse(std::string("computes in bf16 or fp16, not ") + dtype_name(qkv.dtype));
      if (d.head_dim % 8 != 0 || d.head_dim > 128)
        refuse("takes a head dimension that is a multiple of 8 up to 128, not " + std::to_string(d.head_dim));
      if (compute_major_ < 8) refuse("needs compute capability 8.0 or newer");
      if (key_keep.data != nullptr) refuse("takes no padding mask (use \"fused\")");
      if (dropout.enabled())
        refuse("takes no attention dropout: cuDNN draws its own mask, which the CPU backend cannot reproduce (set "
               "model.attention_dropout to 0, or use \"fused\")");
      return;
    }
    if (d.seq > INT32_MAX / 2) throw ShapeError(std::string(op) + ": sequence too long");
    if (compute_major_ < 8)
      throw ShapeError(std::string(op) + ": the CUDA fused attention needs compute capability 8.0 or newer "
                       "(set 'runtime.attention' to \"materialized\")");
    const size_t needed = fused_attention_shared_bytes(d.head_dim);
    if (needed > static_cast<size_t>(shared_optin_))
      throw ShapeError(std::string(op) + ": the CUDA fused attention at head dimension " + std::to_string(d.head_dim) +
                       " needs " + std::to_string(needed) + " bytes of shared memory per block, this GPU offers " +
                       std::to_string(shared_optin_) + " (set 'runtime.attention' to \"materialized\")");
    if (d.batch * d.heads > 65535)  // the grid's y dimension
      throw ShapeError(std::string(op) + ": the CUDA fused attention takes at most 65535 batch x heads, not " +
                       std::to_string(d.batch * d.heads) + " (lower train.micro_batch_size)");
  }

  static FusedAttentionShape fused_shape(const AttentionDims& d, const IntTensor& key_keep, DropoutSpec dropout) {
    return FusedAttentionShape{d.batch, d.seq, d.heads, d.head_dim, d.causal,
                               dropout.enabled() ? dropout.prob : 0.0f, dropout.seed, key_keep.data};
  }

  void attention_forward_fused(Tensor out, Tensor lse, Tensor qkv, IntTensor key_keep, const AttentionDims& d,
                               DropoutSpec dropout) override {
    const char* op = "attention_forward_fused";
    check_fused_attention(op, qkv, lse, out, key_keep, d, dropout);
    expect_dtypes(op, out, {&qkv});
    if (cudnn_ != nullptr) {
      main_cudnn().forward(out.dtype, d, out.data, static_cast<float*>(lse.data), qkv.data, cudnn_workspace(out.dtype, d));
      return;
    }
    launch_attention_forward_fused(out.dtype, out.data, static_cast<float*>(lse.data), qkv.data,
                                   fused_shape(d, key_keep, dropout), stream_);
  }

  void attention_backward_fused(Tensor d_qkv, Tensor d_out, Tensor qkv, Tensor out, Tensor lse, IntTensor key_keep,
                                const AttentionDims& d, DropoutSpec dropout) override {
    const char* op = "attention_backward_fused";
    check_fused_attention(op, qkv, lse, out, key_keep, d, dropout, {&d_qkv, &d_out});
    expect_shape(op, "d_qkv", d_qkv, qkv.shape);
    expect_shape(op, "d_out", d_out, out.shape);
    expect_dtypes(op, d_qkv, {&d_out, &qkv, &out});
    if (cudnn_ != nullptr) {
      main_cudnn().backward(d_qkv.dtype, d, d_qkv.data, d_out.data, qkv.data, out.data, static_cast<const float*>(lse.data),
                       cudnn_workspace(d_qkv.dtype, d));
      return;
    }
    auto* delta = static_cast<float*>(
        fused_delta_.get(static_cast<size_t>(d.batch * d.heads * d.seq) * sizeof(float), main_queue()));
    launch_attention_backward_fused(d_qkv.dtype, d_qkv.data, d_out.data, qkv.data, out.data,
                                    static_cast<const float*>(lse.data), delta, fused_shape(d, key_keep, dropout),
                                    stream_);
  }

  // ---- embeddings ----
  void embedding_forward(Tensor out, IntTensor ids, IntTensor type_ids, Tensor tok, Tensor pos,
                         Tensor type, int64_t seq) override {
    const char* op = "embedding_forward";
    const auto [rows, c] = embedding_dims(false, out, ids, type_ids, tok, pos, type, seq);
    expect_dtypes(op, out, {&tok, &pos, &type});
    launch_embedding_forward(out.dtype, out.data, ids.data, type_ids.data, tok.data, pos.data,
                             type.empty() ? nullptr : type.data, rows, c, seq, dim(tok, 0),
                             type.empty() ? 0 : dim(type, 0), error_word(), stream_);
  }

  void embedding_backward(Tensor d_tok, Tensor d_pos, Tensor d_type, Tensor d_out, IntTensor ids,
                          IntTensor type_ids, int64_t seq) override {
    const char* op = "embedding_backward";
    const auto [rows, c] = embedding_dims(true, d_out, ids, type_ids, d_tok, d_pos, d_type, seq);
    expect_dtypes(op, d_out, {&d_tok, &d_pos, &d_type});
    void* scratch = index_scratch_.get(index_add_scratch_bytes(rows), main_queue());
    launch_index_add(d_out.dtype, d_tok.data, dim(d_tok, 0), d_out.data, ids.data, seq, rows, c,
                     scratch, error_word(), kBadTokenId, stream_);
    launch_index_add(d_out.dtype, d_pos.data, dim(d_pos, 0), d_out.data, nullptr, seq, rows, c,
                     scratch, error_word(), kBadTokenId, stream_);
    if (!d_type.empty())
      launch_index_add(d_out.dtype, d_type.data, dim(d_type, 0), d_out.data, type_ids.data, seq,
                       rows, c, scratch, error_word(), kBadTypeId, stream_);
  }

  void gather_rows(Tensor out, Tensor in, IntTensor rows) override {
    const char* op = "gather_rows";
    expect_rank(op, "in", in, 2);
    const int64_t n = rows.numel(), c = dim(in, 1);
    expect_shape(op, "out", out, {n, c});
    expect_dtypes(op, out, {&in});
    launch_gather_rows(out.dtype, out.data, in.data, rows.data, n, c, dim(in, 0), error_word(),
                       stream_);
  }

  void scatter_add_rows(Tensor d_in, Tensor d_out, IntTensor rows) override {
    const char* op = "scatter_add_rows";
    expect_rank(op, "d_in", d_in, 2);
    const int64_t n = rows.numel(), c = dim(d_in, 1);
    expect_shape(op, "d_out", d_out, {n, c});
    expect_dtypes(op, d_in, {&d_out});
    launch_index_add(d_in.dtype, d_in.data, dim(d_in, 0), d_out.data, rows.data, 1, n, c,
                     index_scratch_.get(index_add_scratch_bytes(n), main_queue()), error_word(),
                     kBadScatterRow, stream_);
  }

  // ---- loss ----
  void cross_entropy(Tensor losses, Tensor d_logits, Tensor logits, IntTensor labels,
                     double grad_scale) override {
    const char* op = "cross_entropy";
    expect_rank(op, "logits", logits, 2);
    const int64_t m = dim(logits, 0), v = dim(logits, 1);
    expect_shape(op, "losses", losses, {m});
    if (!d_logits.empty()) expect_shape(op, "d_logits", d_logits, {m, v});
    if (labels.numel() != m) throw ShapeError("cross_entropy: labels must have one entry per row");
    expect_dtypes(op, logits, {&losses, &d_logits});
    launch_cross_entropy(logits.dtype, losses.data, d_logits.empty() ? nullptr : d_logits.data,
                         logits.data, labels.data, m, v, static_cast<float>(grad_scale),
                         error_word(), stream_);
  }

  // ---- regularisation ----
  void dropout_forward(Tensor out, Tensor in, DropoutSpec spec) override {
    expect_numel("dropout_forward", "in", in, out.numel());
    if (!spec.enabled()) {
      cast(out, in);
      return;
    }
    expect_dtypes("dropout_forward", out, {&in});
    launch_dropout(out.dtype, out.data, in.data, out.numel(), spec.prob, spec.seed, stream_);
  }

  // The same kept elements and the same scale: dropout is linear and self-adjoint.
  void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec spec) override {
    dropout_forward(d_in, d_out, spec);
  }

  // ---- optimizer ----
  void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& s,
             Tensor param_copy) override {
    const int64_t n = param.numel();
    expect_numel("adamw", "grad", grad, n);
    expect_numel("adamw", "m", m, n);
    expect_numel("adamw", "v", v, n);
    if (!param_copy.empty()) {
      expect_numel("adamw", "param_copy", param_copy, n);
      expect_compute_dtype("adamw", param_copy);
    }
    for (const Tensor* t : {&param, &m, &v})
      if (t->dtype != DType::f32)
        throw ShapeError(std::string("adamw: param, m and v must be fp32, got ") + dtype_name(t->dtype));
    expect_compute_dtype("adamw", grad);  // fp32, or a model's own half-precision gradient
    launch_adamw(static_cast<float*>(param.data), grad.dtype, grad.data, static_cast<float*>(m.data),
                 static_cast<float*>(v.data), n, adamw_scalars(s), param_copy.dtype, param_copy.data,
                 on_side_ ? side_sms_ : 0, side_chunked_, stream_);
    if (on_side_) partition_.update_queued(n);
  }

  int64_t gemm_fallback_calls() const {
    return gemm().fallback_calls() + (grad_gemm_ != nullptr ? grad_gemm_->fallback_calls() : 0);
  }
  int64_t bias_grad_epilogue_calls() const {
    return gemm().bias_grad_epilogue_calls() + (grad_gemm_ != nullptr ? grad_gemm_->bias_grad_epilogue_calls() : 0);
  }
  int64_t weight_grad_forks() const { return weight_grad_forks_; }
  int64_t sm_targeted_gemm_calls() const {
    return gemm().sm_targeted_calls() + (grad_gemm_ != nullptr ? grad_gemm_->sm_targeted_calls() : 0);
  }
  int64_t gemm_autotuned_plans() const {
    return gemm().autotuned_plans() + (grad_gemm_ != nullptr ? grad_gemm_->autotuned_plans() : 0);
  }
  int64_t gemm_autotune_changes() const {
    return gemm().autotune_changes() + (grad_gemm_ != nullptr ? grad_gemm_->autotune_changes() : 0);
  }
  const GemmLt& gemm() const { return *gemm_; }
  int64_t scratch_growths() const {
    return pad_weight_.growths() + pad_bias_.growths() + pad_rows_.growths() +
           index_scratch_.growths() + fused_delta_.growths() + column_partials_.growths() +
           cudnn_workspace_.growths() + bias_grad_.growths();
  }

 private:
  // `src` ([rows, cols] of es-byte elements) copied into `buffer` with zero rows after it up
  // to padded_rows rows.
  const void* padded_rows(GrowingBuffer& buffer, const void* src, int64_t rows, int64_t padded,
                          int64_t cols, size_t es) {
    char* dst = static_cast<char*>(buffer.get(static_cast<size_t>(padded * cols) * es, main_queue()));
    const size_t used = static_cast<size_t>(rows * cols) * es;
    MICS_CUDA_CHECK(cudaMemcpyAsync(dst, src, used, cudaMemcpyDeviceToDevice, stream_));
    MICS_CUDA_CHECK(cudaMemsetAsync(dst + used, 0, static_cast<size_t>((padded - rows) * cols) * es, stream_));
    return dst;
  }

  void reserve_scratch(const ScratchBounds& b) override {
    const size_t es = dtype_size(b.dtype);
    size_t weight = 0, bias = 0, rows = 0;
    int64_t partials = column_partials_floats(b.rows, b.layernorm_width, 2);
    for (const auto& [n, k] : b.linears) {
      partials = std::max(partials, column_partials_floats(b.rows, n, 1));
      const int64_t np = padded_width(n, b.dtype);
      if (np == n) continue;
      weight = std::max(weight, static_cast<size_t>(np * k) * es);
      bias = std::max(bias, static_cast<size_t>(np) * es);
      rows = std::max(rows, static_cast<size_t>(b.rows * np) * es);
    }
    pad_weight_.reserve(weight, stream_);
    pad_bias_.reserve(bias, stream_);
    pad_rows_.reserve(rows, stream_);
    column_partials_.reserve(static_cast<size_t>(partials) * sizeof(float), stream_);
    int64_t widest = 0;
    for (const auto& [n, k] : b.linears) widest = std::max(widest, n);
    bias_grad_.reserve(static_cast<size_t>(widest) * sizeof(float), stream_);
    index_scratch_.reserve(index_add_scratch_bytes(b.rows), stream_);
    const AttentionDims& a = b.fused_attention;
    if (cudnn_ != nullptr && a.batch > 0 && (b.dtype == DType::bf16 || b.dtype == DType::f16)) {
      try {
        cudnn_workspace_.reserve(cudnn_->prepare(b.dtype, a), stream_);  // builds the plans too
        return;
      } catch (const CudaError&) {
        throw;  // the device's fault (out of memory, say), not cuDNN's refusal
      } catch (const std::exception& e) {  // a declined graph (ShapeError), the frontend's errors
        if (!cudnn_fallback_) throw;
        fall_back_from_cudnn(e.what());
      }
    }
    if (!cudnn_unavailable_.empty() && a.batch > 0) {
      // Only where this backend's own fused kernels take the shape (check_fused_attention's
      // conditions), else the run stops here with both reasons.
      const bool ours = (a.head_dim == 64 || a.head_dim == 128) && compute_major_ >= 8 &&
                        fused_attention_shared_bytes(a.head_dim) <= static_cast<size_t>(shared_optin_) &&
                        a.batch * a.heads <= 65535;
      if (!ours)
        throw ShapeError(cudnn_unavailable_ + "; this backend's own fused attention cannot take head dimension " +
                         std::to_string(a.head_dim) + " on this GPU either: set runtime.attention to \"materialized\"");
      spdlog::warn("runtime.attention auto: cuDNN's fused attention cannot run here ({}); this backend's own fused "
                   "attention kernels run it instead (set runtime.attention to \"fused\" or \"materialized\" to "
                   "choose)",
                   cudnn_unavailable_);
    }
    fused_delta_.reserve(static_cast<size_t>(a.batch * a.heads * a.seq) * sizeof(float), stream_);
  }

  // runtime.attention "auto" chose cuDNN, which cannot run here: our fused kernels instead.
  // Said in reserve(), where the model's attention shape tells whether ours can take it.
  void fall_back_from_cudnn(const std::string& why) {
    cudnn_.reset();
    cudnn_unavailable_ = why;
  }

  // cuDNN's workspace for this attention shape (its plans are built on first use).
  void* cudnn_workspace(DType t, const AttentionDims& d) {
    const size_t bytes = cudnn_->prepare(t, d);
    return bytes == 0 ? nullptr : cudnn_workspace_.get(bytes, main_queue());
  }

  // Partial sums for a column reduction of `sums` outputs over [rows, cols].
  float* column_partials(int64_t rows, int64_t cols, int sums) {
    const auto floats = static_cast<size_t>(column_partials_floats(rows, cols, sums));
    return static_cast<float*>(column_partials_.get(floats * sizeof(float), main_queue()));
  }

  // Scratch layout: reduction partials (double, then unsigned long long), the two results,
  // the device error word, then the queued sums' partials, the main stream's and the side
  // queue's (their sums may run at once).
  static constexpr size_t kQueuedPartialsOffset = 2 * kReducePartials * 8 + 2 * 8 + 8 + 8;
  static constexpr size_t kScratchBytes = kQueuedPartialsOffset + 2 * size_t{kQueuedPartials} * 8;
  double* queued_partials() const {
    return reinterpret_cast<double*>(static_cast<char*>(scratch_) + kQueuedPartialsOffset) +
           (on_side_ ? kQueuedPartials : 0);
  }
  double* partials() const { return (void)main_queue(), static_cast<double*>(scratch_); }
  unsigned long long* count_partials() const {
    return (void)main_queue(), reinterpret_cast<unsigned long long*>(static_cast<char*>(scratch_) + kReducePartials * 8);
  }
  double* result() const {
    return reinterpret_cast<double*>(static_cast<char*>(scratch_) + 2 * kReducePartials * 8);
  }
  unsigned long long* count_result() const {
    return reinterpret_cast<unsigned long long*>(static_cast<char*>(scratch_) +
                                                 2 * kReducePartials * 8 + 8);
  }
  // The stream of an op whose scratch, cuBLASLt handle or cuDNN plans are the main
  // stream's alone: such an op queued from run_on_side_queue would race the main stream
  // for them (the side queue takes the optimizer's update and the queued sums, which have
  // their own).
  cudaStream_t main_queue() const {
    if (on_side_)
      throw std::logic_error("an op that uses the main stream's scratch (GEMMs, attention, reductions read back, "
                             "column sums, sorts) was queued on the CUDA backend's side queue");
    return stream_;
  }
  GemmLt& main_gemm() {
    (void)main_queue();
    gemm_->set_sm_count_target(gemm_sms());
    return *gemm_;
  }
  // The SMs the main stream's GEMMs are planned for (sm_partition.h), a fence's work seen
  // done by its event (recorded again since, an event stands for a later point still).
  int gemm_sms() {
    return partition_.gemm_sms([this](int64_t fence) {
      const cudaError_t done = poll_event(fences_[static_cast<size_t>(fence % kFences)]);
      if (done == cudaErrorNotReady) return false;
      MICS_CUDA_CHECK(done);
      return true;
    });
  }
  CudnnAttention& main_cudnn() { return (void)main_queue(), *cudnn_; }
  int* error_word() const {
    return reinterpret_cast<int*>(static_cast<char*>(scratch_) + 2 * kReducePartials * 8 + 16);
  }

  // Reads (and clears) the bits kernels set on bad indices since the last check; throws
  // what the CPU backend throws for the same input (it finds them before computing).
  void check_device_errors() {
    int bits = 0;
    MICS_CUDA_CHECK(cudaMemcpyAsync(&bits, error_word(), sizeof(bits), cudaMemcpyDeviceToHost, stream_));
    MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (bits == 0) return;
    MICS_CUDA_CHECK(cudaMemsetAsync(error_word(), 0, sizeof(int), stream_));
    MICS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::string what;
    auto note = [&](int bit, const char* text) {
      if (bits & bit) what += (what.empty() ? "" : "; ") + std::string(text);
    };
    note(kBadTokenId, "a token id outside the vocabulary");
    note(kBadTypeId, "a token type id outside the type table");
    note(kBadLabel, "a label outside the vocabulary");
    note(kBadGatherRow, "gather_rows: row out of range");
    note(kBadScatterRow, "scatter_add_rows: row out of range");
    what = "cuda backend: " + what + " (found by a kernel; the affected entries were skipped)";
    if (bits & (kBadGatherRow | kBadScatterRow)) throw ShapeError(what);
    throw std::out_of_range(what);
  }

  int device_;
  int compute_major_ = 0, shared_optin_ = 0;  // compute capability major, opt-in shared memory per block
  cudaStream_t stream_ = nullptr;
  // The side queue (run_on_side_queue): its stream, the event it starts behind, its fences.
  static constexpr int64_t kFences = 1024;
  cudaStream_t side_ = nullptr;
  cudaEvent_t side_start_ = nullptr;
  bool on_side_ = false;  // run_on_side_queue's work is queuing (stream_ is the side stream)
  std::vector<std::array<cudaEvent_t, 2>> wait_timers_;  // around each fence wait, reused
  size_t wait_timers_used_ = 0;                          // since the last take_fence_wait_s
  int side_sms_ = 0;      // CudaBackendOptions::side_queue_sms, at most the device's SMs
  bool side_chunked_ = true;  // CudaBackendOptions::side_queue_chunked
  SmPartition partition_{0, 0, true, true};  // the side queue's update holding SMs, as the host sees it
  std::array<cudaEvent_t, kFences> fences_{};
  int64_t next_fence_ = 0;
  void* scratch_ = nullptr;
  std::unique_ptr<GemmLt> gemm_;
  // runtime.overlap_weight_grads: the weight gradients' stream (the main one's priority), its
  // own cuBLASLt handle and workspace, and the events it forks from and joins the main one by.
  cudaStream_t grad_stream_ = nullptr;
  cudaEvent_t grad_fork_ = nullptr, grad_join_ = nullptr;
  std::unique_ptr<GemmLt> grad_gemm_;
  int64_t weight_grad_forks_ = 0;  // linear backwards that ran their weight gradients there
  // Padded copies for linear layers of an awkward output width (padded_width).
  GrowingBuffer pad_weight_, pad_bias_, pad_rows_;
  GrowingBuffer index_scratch_;  // index_add's sort (embedding backward, scatter_add_rows)
  GrowingBuffer fused_delta_;    // the fused attention backward's row dots dO . O
  GrowingBuffer column_partials_;  // column reductions' partial sums
  GrowingBuffer bias_grad_;        // a linear layer's bias gradient from the GEMM's epilogue
  std::unique_ptr<CudnnAttention> cudnn_;  // runtime.attention "cudnn": the fused ops go to cuDNN
  bool cudnn_fallback_ = false;            // CudaBackendOptions::cudnn_attention_fallback
  std::string cudnn_unavailable_;          // why cuDNN could not run it, after such a fallback
  GrowingBuffer cudnn_workspace_;
  std::unique_ptr<EventTimeline> timeline_;  // made when a profiler first asks
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(device, options);
}

void* cuda_stream(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? static_cast<void*>(cuda->stream()) : nullptr;
}

int64_t cuda_gemm_fallback_calls(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->gemm_fallback_calls() : 0;
}

int64_t cuda_bias_grad_epilogue_calls(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->bias_grad_epilogue_calls() : 0;
}

int64_t cuda_weight_grad_forks(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->weight_grad_forks() : 0;
}

int64_t cuda_sm_targeted_gemm_calls(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->sm_targeted_gemm_calls() : 0;
}

int64_t cuda_gemm_autotuned_plans(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->gemm_autotuned_plans() : 0;
}

int64_t cuda_gemm_autotune_changes(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->gemm_autotune_changes() : 0;
}

int64_t cuda_scratch_growths(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->scratch_growths() : 0;
}

}  // namespace mics
