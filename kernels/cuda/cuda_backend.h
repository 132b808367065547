#pragma once
// The CUDA backend behind kernels/ops.h (compiled only when MICS_CUDA is on). Plain C++:
// no CUDA header is needed to include this, so engine code can name the backend without
// nvcc. Tensors passed to it, IntTensor views included, hold device pointers (from its
// allocate()); sum, sum_squares and count_nonfinite return host values.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/ops.h"

namespace mics {

struct CudaBackendOptions {
  // fp32 GEMMs on tensor cores with TF32 inputs (10-bit mantissa): much faster, but no
  // longer within fp32 tolerances of the CPU backend. Off by default.
  bool allow_tf32 = false;
  // cuBLASLt workspace, allocated once at construction.
  size_t gemm_workspace_bytes = size_t{32} << 20;
  // attention_forward_fused / attention_backward_fused through cuDNN's fused attention
  // instead of this backend's own kernels (runtime.attention "cudnn"): bf16/fp16, head
  // dimension a multiple of 8 up to 128, no padding mask, no attention dropout.
  bool cudnn_attention = false;
  // With cudnn_attention, chosen by runtime.attention "auto": where cuDNN cannot run the
  // model's attention (it cannot start, or declines the graphs when the model's buffers are
  // reserved: no libnvrtc, say), this backend's own fused kernels run it instead, said once
  // in the log, rather than the run failing.
  bool cudnn_attention_fallback = false;
  // With cudnn_attention: cuDNN's deterministic attention backward (as long as its
  // workspace stays within kCudnnDeterministicWorkspaceBudget), or, false, its
  // nondeterministic one from the start (runtime.cudnn_deterministic).
  bool cudnn_deterministic = true;
  // Each linear layer's weight (and bias) gradient on a second stream at the main one's
  // priority, with a cuBLASLt handle and workspace of its own, concurrently with its input
  // gradient's product, joined before the op returns (runtime.overlap_weight_grads).
  bool weight_grad_stream = false;
  // Time the heuristic's top cuBLASLt algorithms per GEMM shape at its first call (beta 0
  // ones) and keep the fastest (runtime.gemm_autotune).
  bool gemm_autotune = false;
  // The most SMs the side queue's work (the overlapped optimizer update) may hold at once:
  // its kernels run as at most this many blocks of 1024 threads, which the block scheduler
  // spreads one to an SM; 0: no bound (ordinary grids, at the lowest stream priority).
  // More than the device has is taken as the device's count.
  int side_queue_sms = 0;
  // With side_queue_sms: its kernels in chunks of about 0.1 ms (at whose ends the main
  // stream's blocks may take the SMs back), or each as one launch holding its SMs to the end:
  // a partition of the device, so while such an update may still run the main stream's
  // GEMMs are planned for the SMs it leaves (cuBLASLt's SM count target).
  bool side_queue_chunked = true;
  // With side_queue_sms unchunked: the main stream's GEMMs beside the update planned for the
  // SMs it leaves. False only to measure what that gains (mics-bench-ops).
  bool partition_gemms = true;
};

// Whether this build compiled the CUDA backend (false where nvcc was absent or MICS_CUDA off).
bool cuda_backend_built();
// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int cuda_device_count();
// Free and total bytes of `device` now (cudaMemGetInfo); false when it cannot be queried.
bool cuda_memory_info(int device, size_t& free_bytes, size_t& total_bytes);
// major * 10 + minor (90 for H100), or 0 when the device cannot be queried.
int cuda_compute_capability(int device);
// "NVIDIA H100 80GB HBM3", or "unknown" when the device cannot be queried.
std::string cuda_device_name(int device);
// The device's PCI bus id ("0000:3b:00.0"): the same GPU gives the same id in every process
// of a node, whatever CUDA_VISIBLE_DEVICES numbers it (NCCL tells GPUs apart by it too);
// empty when the device cannot be queried.
std::string cuda_device_pci_bus_id(int device);

// A backend on `device` (cudaSetDevice is called once, here): one stream, one cuBLASLt
// handle and workspace, owned by the backend. Throws mics::cuda::CudaError (a
// std::runtime_error) when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& options = {});

// The backend's stream as a cudaStream_t cast to void* (for an NCCL communicator that must
// order its collectives with the backend's kernels); nullptr when `backend` is not CUDA.
void* cuda_stream(Backend& backend);

// GEMMs that cuBLASLt declined and the plain fallback kernel computed (tests, diagnostics).
int64_t cuda_gemm_fallback_calls(Backend& backend);

// Linear-layer bias gradients that cuBLASLt's BGRADB epilogue computed (tests, diagnostics;
// the rest ran as column sums).
int64_t cuda_bias_grad_epilogue_calls(Backend& backend);

// Linear backwards whose weight gradients ran on the weight-gradient stream
// (CudaBackendOptions::weight_grad_stream).
int64_t cuda_weight_grad_forks(Backend& backend);
// GEMMs planned for fewer SMs than the device has (cuBLASLt's SM count target) because a
// partitioned optimizer update (side_queue_sms with side_queue_chunked false) held the rest
// (tests, diagnostics).
int64_t cuda_sm_targeted_gemm_calls(Backend& backend);

// With gemm_autotune: GEMM shapes whose cuBLASLt algorithms were timed, and those where one
// other than the heuristic's first won (tests, diagnostics).
int64_t cuda_gemm_autotuned_plans(Backend& backend);
int64_t cuda_gemm_autotune_changes(Backend& backend);

// Times a scratch buffer had to grow after Backend::reserve_scratch (0 when the model's
// bounds covered every op: no allocation inside a step).
int64_t cuda_scratch_growths(Backend& backend);

}  // namespace mics
