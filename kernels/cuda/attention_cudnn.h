#pragma once
// cuDNN's fused attention (its SDPA graphs), through the cuDNN frontend's graph API
// (third_party/cudnn_frontend): the same op as attention_forward_fused /
// attention_backward_fused (kernels/ops.h), computed by cuDNN's own SDPA kernels.
// `runtime.attention: "cudnn"` selects it. Internal to kernels/cuda; plain C++ (the
// frontend's headers stay inside attention_cudnn.cpp).
//
// What it covers: bf16/fp16, head dimension a multiple of 8 up to 128, causal or
// bidirectional, no padding mask and no attention dropout (cuDNN draws its dropout mask
// from its own generator, which the CPU backend cannot reproduce): the backend refuses the
// rest before calling. cuDNN itself may still decline a shape (at its heuristics, support
// check or plan build), which is
// reported as a ShapeError naming runtime.attention (the forward first retries with the
// frontend's composite graph).
//
// lse[B,H,T] holds cuDNN's softmax statistics (the natural log-sum-exp of the scaled
// scores); the backward reads them back. The backward asks cuDNN for its deterministic
// algorithm, so a step repeats bit for bit like the rest of the engine; that one keeps dP
// (B x H x T x T) in its workspace, so past 1 GiB of it (long sequences), or where cuDNN
// has none, the nondeterministic one runs and the log says so once. The forward takes the
// frontend's default SDPA implementation, or its composite one where cuDNN declines that.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/ops.h"

namespace mics::cuda {

class CudnnAttention {
 public:
  // Creates the cuDNN handle on the current device, bound to `stream`; throws a
  // std::runtime_error naming runtime.attention when cuDNN cannot start.
  // Which backward: deterministic_else_fast takes the deterministic algorithm where cuDNN
  // has one within kCudnnDeterministicWorkspaceBudget, else the nondeterministic one with a
  // warning (runtime.attention "cudnn"); deterministic_only refuses (ShapeError) such a
  // shape instead (runtime.attention "auto", whose backend then runs its own kernels); fast
  // takes the nondeterministic one from the start (runtime.cudnn_deterministic false).
  enum class Backward { deterministic_else_fast, deterministic_only, fast };
  explicit CudnnAttention(cudaStream_t stream, Backward backward = Backward::deterministic_else_fast);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Builds the forward and backward plans for this shape (once; later calls find them) and
  // returns the larger of their workspaces in bytes.
  size_t prepare(DType t, const AttentionDims& d);

  // out[B,T,C], lse[B,H,T] fp32, qkv[B,T,3C]; workspace of prepare()'s size.
  void forward(DType t, const AttentionDims& d, void* out, float* lse, const void* qkv, void* workspace);
  // d_qkv[B,T,3C] (=), d_out and out [B,T,C], qkv[B,T,3C], lse[B,H,T] from forward().
  void backward(DType t, const AttentionDims& d, void* d_qkv, const void* d_out, const void* qkv,
                const void* out, const float* lse, void* workspace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The frontend's own checks of the graphs this class builds (the forward, both backwards), for a GPU of compute
// capability sm_version (90 for Hopper) without one: "" when both pass, else what failed.
// Runs where there is no GPU (tests), so the graph descriptions are checked in every build.
std::string validate_cudnn_attention(DType t, const AttentionDims& d, int sm_version);

}  // namespace mics::cuda
