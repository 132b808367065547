#pragma once
// The backend interface: every operation the models need, implemented once per device
// (kernels/cpu, kernels/cuda). Model code calls only this.
//
// Gradient rule, used by every backward below:
//   * parameter gradients ACCUMULATE (+=): micro-batches and tied weights add up in place;
//   * activation gradients OVERWRITE (=);
//   * the residual stream accumulates: ops whose input gradient feeds a residual branch
//     take `Accumulate::yes` to add into it instead of overwriting.
//
// Argument order: outputs first, then inputs, then sizes and options. Shapes are in the
// comments; every op checks shapes and dtypes at entry and throws ShapeError on mismatch.
// Float tensors of one call share one dtype (fp32 on the CPU; fp64 for gradient checks).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace mics {

enum class Accumulate : bool { no = false, yes = true };
enum class GeluKind : uint8_t { erf, tanh };  // BERT uses erf; GPT-2 the tanh approximation

struct AttentionDims {
  int64_t batch = 0;     // B
  int64_t seq = 0;       // T
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // D, H*D = C
  bool causal = false;   // GPT: position t attends to positions <= t
};

// cuDNN's deterministic attention backward keeps dP (B x H x T x T, 2 bytes each) and the
// softmax sums (B x H x T, 4 bytes) in its workspace: 160.6 MiB at 8 x 40 x 512 x 512 on the
// H200, at head dimension 64 and 128 alike. Past this budget the CUDA backend runs the
// nondeterministic one (kernels/cuda/attention_cudnn.h), which runtime.attention "auto"
// avoids; the estimate adds 16 MiB of headroom, in double (no overflow for absurd shapes).
inline constexpr int64_t kCudnnDeterministicWorkspaceBudget = int64_t{1} << 30;
inline double cudnn_deterministic_workspace_estimate(const AttentionDims& d) {
  const double bht = static_cast<double>(d.batch) * static_cast<double>(d.heads) * static_cast<double>(d.seq);
  return bht * (2.0 * static_cast<double>(d.seq) + 4.0) + 16.0 * (1 << 20);
}

// Dropout as a pure function of (seed, element index): the backward regenerates the mask
// instead of storing it, and results do not depend on threads or devices.
struct DropoutSpec {
  float prob = 0.0f;  // probability of zeroing; 0 disables
  uint64_t seed = 0;
  bool enabled() const { return prob > 0.0f; }
};

struct AdamWSpec {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled; 0 for tensors outside the decay mask
  int64_t step = 1;           // 1-based, for bias correction
  float grad_scale = 1.0f;    // multiplies the gradient first (clipping, loss-scale undo)
};

// The largest shapes a model will give the ops (Backend::reserve_scratch).
struct ScratchBounds {
  DType dtype = DType::f32;
  int64_t rows = 0;                                  // rows of any row-wise op: B*T
  std::vector<std::pair<int64_t, int64_t>> linears;  // every linear weight's (out, in)
  int64_t layernorm_width = 0;
  AttentionDims fused_attention;  // the fused attention's shape; batch 0 when attention is materialised
};

// Points on a device's own timeline (CUDA events on the backend's stream): a profiler can
// time ops there without synchronising around each one.
class DeviceTimeline {
 public:
  virtual ~DeviceTimeline() = default;
  // Records a point after all work queued so far; returns its id.
  virtual int64_t mark() = 0;
  // Device seconds from mark `begin` to mark `end` (waits until `end` is reached).
  virtual double seconds_between(int64_t begin, int64_t end) = 0;
  // Every mark so far has been read: their ids may be reused.
  virtual void forget() = 0;
  // How an op's time between two marks is to be read (one clause, for reports).
  virtual const char* how() const = 0;
};

// A second queue, for work that may overlap later work of the main one (the optimizer's
// update of a layer while the next step's forward computes the layers before it; a
// Backend is one). run_on_side_queue queues the ops `work` calls behind everything queued
// so far, on a queue of their own, and returns a fence; wait_for_fence makes the main
// queue's later work wait until the side queue has passed it. Only ops that use no backend
// scratch may run there (adamw). Without a side queue (has_side_queue() false: the CPU,
// the profiler) callers run such work on the main queue where its result is first needed.
class SideQueue {
 public:
  virtual ~SideQueue() = default;
  virtual bool has_side_queue() const { return false; }
  virtual int64_t run_on_side_queue(const std::function<void()>& work) {
    work();
    return 0;
  }
  virtual void wait_for_fence(int64_t /*fence*/) {}
  // Seconds the main queue stood still at wait_for_fence since the last call (its side
  // work not yet done when the main queue got there), over waits the main queue has passed:
  // call after reading a result of later main-queue work. 0 without a side queue.
  virtual double take_fence_wait_s() { return 0.0; }
};

class Backend : public SideQueue {
 public:
  ~Backend() override = default;
  virtual const char* name() const = 0;
  // True when `dtype` is a compute dtype of this backend.
  virtual bool supports(DType dtype) const = 0;

  // ---- memory (no op allocates on its own; callers allocate once at start-up) ----
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* ptr) noexcept = 0;
  virtual void copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  // Host memory that device data is staged through (page-locked on a GPU, so copies to and
  // from it run at the bus's speed); plain memory where the device is the host.
  virtual void* allocate_host(size_t bytes) { return ::operator new(bytes); }
  virtual void release_host(void* ptr) noexcept { ::operator delete(ptr); }
  virtual void synchronize() = 0;
  // The device's timeline for profiling; nullptr where there is none (CPU backend): a
  // profiler then reads the host clock between synchronisations.
  virtual DeviceTimeline* timeline() { return nullptr; }
  // Sizes the backend's per-op scratch for the largest shapes to come, so that no op
  // allocates inside a training step. A model calls it once its shapes are known.
  virtual void reserve_scratch(const ScratchBounds& bounds) = 0;


  // ---- element-wise ----
  virtual void fill_zero(Tensor x) = 0;
  // out = in, converting dtype (fp32 master -> working copy and back).
  virtual void cast(Tensor out, Tensor in) = 0;
  // out = a + b (residual add; out may alias a or b).
  virtual void add(Tensor out, Tensor a, Tensor b) = 0;
  // x *= alpha
  virtual void scale(Tensor x, double alpha) = 0;
  // Returns sum(x) and sum(x^2) on the host, accumulated in double.
  virtual double sum(Tensor x) = 0;
  virtual double sum_squares(Tensor x) = 0;
  // out[1] (f64, this backend's memory) = sum(x^2) accumulated in double, queued as any op
  // is, with no read-back: the gradient norm summed layer by layer as each layer's
  // gradient becomes final, on the side queue, while the backward goes on.
  virtual void sum_squares_into(Tensor out, Tensor x) = 0;
  // Number of NaN/Inf entries.
  virtual int64_t count_nonfinite(Tensor x) = 0;

  // ---- dense layers ----
  // out[M,N] = in[M,K] @ weight[N,K]^T (+ bias[N] when given). Weights are [out, in].
  virtual void linear_forward(Tensor out, Tensor in, Tensor weight, Tensor bias) = 0;
  // d_in[M,K] (=, or += with acc_d_in) = d_out @ weight; d_weight[N,K] (+=, or = with
  // acc_params no) d_out^T @ in; d_bias[N] (the same) column sums of d_out. Empty d_in /
  // d_bias are skipped. Parameter gradients accumulate unless the caller knows the buffer
  // holds nothing yet (its first write in a micro-step: no zero-fill, no read of it).
  virtual void linear_backward(Tensor d_in, Tensor d_weight, Tensor d_bias, Tensor d_out,
                               Tensor in, Tensor weight, Accumulate acc_d_in,
                               Accumulate acc_params = Accumulate::yes) = 0;

  virtual void gelu_forward(Tensor out, Tensor in, GeluKind kind) = 0;
  // d_in = gelu'(in) * d_out; d_in may alias d_out.
  virtual void gelu_backward(Tensor d_in, Tensor d_out, Tensor in, GeluKind kind) = 0;

  // A linear layer followed by GELU (the FFN's first layer), one GEMM epilogue where the
  // backend can: pre[M,N] = linear_forward(in, weight, bias), act[M,N] = gelu(pre).
  virtual void linear_gelu_forward(Tensor act, Tensor pre, Tensor in, Tensor weight, Tensor bias,
                                   GeluKind kind) = 0;
  // The backward of a linear layer whose input was act = gelu(pre), through the GELU:
  // d_pre[M,K] = (d_out @ weight) * gelu'(pre) (written), d_weight[N,K] += d_out^T @ act,
  // d_bias[N] += column sums of d_out (skipped when empty); = for both with acc_params no.
  virtual void linear_gelu_backward(Tensor d_pre, Tensor d_weight, Tensor d_bias, Tensor d_out,
                                    Tensor act, Tensor pre, Tensor weight, GeluKind kind,
                                    Accumulate acc_params = Accumulate::yes) = 0;

  // out[M,C] = (in - mean) * rstd * gamma[C] + beta[C]; saves mean[M], rstd[M].
  virtual void layernorm_forward(Tensor out, Tensor mean, Tensor rstd, Tensor in, Tensor gamma,
                                 Tensor beta, float eps) = 0;
  // The residual add and the LayerNorm after it, in one pass where the backend can:
  // sum[M,C] = a + b (rounded to the dtype), then out = layernorm_forward(sum). sum may
  // alias a or b.
  virtual void add_layernorm_forward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a,
                                     Tensor b, Tensor gamma, Tensor beta, float eps) = 0;
  // d_in[M,C] (= or +=), d_gamma[C] and d_beta[C] (+=, or = with acc_params no).
  virtual void layernorm_backward(Tensor d_in, Tensor d_gamma, Tensor d_beta, Tensor d_out,
                                  Tensor in, Tensor gamma, Tensor mean, Tensor rstd,
                                  Accumulate acc_d_in, Accumulate acc_params = Accumulate::yes) = 0;

  // ---- attention ----
  // qkv[B,T,3C] holds q, k, v side by side, head h at columns h*D of each.
  // probs[B,H,T,T] saves the softmax (before dropout); out[B,T,C] = dropout(probs) @ v.
  // key_keep[B,T] (optional): 1 where the key position is a real token, 0 for padding.
  virtual void attention_forward(Tensor out, Tensor probs, Tensor qkv, IntTensor key_keep,
                                 const AttentionDims& dims, DropoutSpec dropout) = 0;
  // d_qkv[B,T,3C] (=); scratch[B,H,T,T] is workspace.
  virtual void attention_backward(Tensor d_qkv, Tensor scratch, Tensor d_out, Tensor qkv,
                                  Tensor probs, const AttentionDims& dims,
                                  DropoutSpec dropout) = 0;
  // The same attention without a T x T matrix kept between forward and backward (flash
  // style): lse[B,H,T] (fp32; fp64 for fp64 tensors) saves each query row's log-sum-exp of its scaled, masked
  // scores (-inf for a row whose keys are all hidden; its output is 0). The backward
  // recomputes the probabilities from qkv and lse; out is the forward's output. Dropout
  // masks are the materialised path's, element for element (same flat index of probs).
  virtual void attention_forward_fused(Tensor out, Tensor lse, Tensor qkv, IntTensor key_keep,
                                       const AttentionDims& dims, DropoutSpec dropout) = 0;
  virtual void attention_backward_fused(Tensor d_qkv, Tensor d_out, Tensor qkv, Tensor out,
                                        Tensor lse, IntTensor key_keep, const AttentionDims& dims,
                                        DropoutSpec dropout) = 0;

  // ---- embeddings ----
  // out[B*T,C] = tok[ids] + pos[t] (+ type[type_ids] when type_table is given).
  virtual void embedding_forward(Tensor out, IntTensor ids, IntTensor type_ids, Tensor tok_table,
                                 Tensor pos_table, Tensor type_table, int64_t seq) = 0;
  // d_tok[V,C] +=, d_pos[P,C] +=, d_type[K,C] += (when given).
  virtual void embedding_backward(Tensor d_tok, Tensor d_pos, Tensor d_type, Tensor d_out,
                                  IntTensor ids, IntTensor type_ids, int64_t seq) = 0;

  // out[n,C] = in[rows[i], :]; scatter_add is its backward: d_in[rows[i], :] += d_out[i].
  virtual void gather_rows(Tensor out, Tensor in, IntTensor rows) = 0;
  virtual void scatter_add_rows(Tensor d_in, Tensor d_out, IntTensor rows) = 0;

  // ---- loss ----
  // Softmax cross-entropy per row: losses[M] (0 where labels[i] < 0, the ignore label).
  // When d_logits[M,V] is given: d_logits = grad_scale * (softmax - onehot), 0 on ignored
  // rows. d_logits may alias logits (the logits are consumed).
  virtual void cross_entropy(Tensor losses, Tensor d_logits, Tensor logits, IntTensor labels,
                             double grad_scale) = 0;

  // ---- regularisation ----
  // out = in * keep / (1 - p), in place allowed. Each call site uses its own seed.
  virtual void dropout_forward(Tensor out, Tensor in, DropoutSpec spec) = 0;
  virtual void dropout_backward(Tensor d_in, Tensor d_out, DropoutSpec spec) = 0;

  // ---- optimizer (fp32 shards) ----
  // AdamW on a contiguous span: param, m, v [n] fp32; grad [n] fp32, or (CUDA) a model's own
  // bf16/fp16 gradient, widened exactly as it is read. param_copy: empty, or [n]
  // in a compute dtype that also receives the updated param, rounded to it (the
  // half-precision working copy, written in the same pass instead of a cast after it).
  virtual void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec,
                     Tensor param_copy) = 0;
};

// Move-only owner of one backend allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& backend, size_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Tensor view(DType dtype, Shape shape) const;
  IntTensor int_view(Shape shape) const;

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace mics
