#pragma once
// Row-major GEMMs through cuBLASLt, with a cache of descriptors and algorithm choices.
// Internal to kernels/cuda.
//
// Row-major to column-major. cuBLASLt is column-major; a row-major matrix X[r][c] with
// leading dimension ld (elements from one row to the next) is, byte for byte, the
// column-major matrix X^T of size c x r with the same ld. So the row-major product
//     C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C
// is computed as the column-major product
//     C^T[n,m] = alpha op(B)^T[n,k] op(A)^T[k,m] + beta C^T
// i.e. cuBLASLt's "A" is our B and its "B" is our A, with m and n swapped and each
// transpose flag kept with its own matrix:
//   cuBLASLt A = our B: stored (trans_b ? k x n : n x k), ld = ldb, op = trans_b ? T : N
//   cuBLASLt B = our A: stored (trans_a ? m x k : k x m), ld = lda, op = trans_a ? T : N
//   cuBLASLt C = D   = our C: stored n x m, ld = ldc
// cuBLASLt's BIAS epilogue adds a vector of length rows(D) = n to every column of D^T,
// i.e. bias[n] to every row of our C: the linear layer's bias.
//
// Batched products (attention) use strided batches: element b of the batch is at
// pointer + b * stride for each matrix.
//
// Every distinct (dtype, shape, transposes, leading dimensions, strides, batch, epilogues,
// beta != 0, pointer alignments, SM count target) gets its descriptor, layouts and the
// heuristic's best algorithm once; later calls reuse them. When cuBLASLt offers no algorithm (unusual
// alignments, say), a plain tiled CUDA kernel computes the product instead (fp32
// accumulation, same semantics) and fallback_calls() counts it; a product with a GELU or
// bias-gradient epilogue is declined instead (try_run), and the caller composes it.
//
// With autotune on, a plan keeps up to kAutotuneCandidates of the heuristic's algorithms
// and, at its first call whose output does not depend on what C held (beta 0), times each
// on that call's own operands, in interleaved rounds, and keeps the fastest by its median
// round where it beats the heuristic's first by 3% or more (cuBLASLt's first choice is not
// always the fastest, and a single timing pass picks noise). The product is then computed once more with the kept algorithm, so the call's result
// is that algorithm's. One plan per shape family (the key without m and k) is timed. Off by default: which algorithm wins can change from run to run, and
// with it the last bits of the products.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "kernels/tensor.h"

namespace mics::cuda {

struct GemmArgs {
  DType dtype = DType::f32;  // of A, B, C (and bias)
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int64_t batch = 1;
  float alpha = 1.0f, beta = 0.0f;
  const void* bias = nullptr;  // [n], added to every row of C; only with batch == 1
  // cuBLASLt's GELU epilogues (the tanh form), batch 1, C and aux contiguous (ldc = ld_aux = n):
  // gelu_aux: aux = product (+ bias), C = gelu(aux); dgelu: C = product * gelu'(aux), no bias.
  enum class Gelu : uint8_t { none, gelu_aux, dgelu };
  Gelu gelu = Gelu::none;
  void* aux = nullptr;  // [m, n]
  // cuBLASLt's BGRADB epilogue (only through GemmLt::try_run): bias_grad[m] = the sums of
  // op(A)'s rows over k, written, not added, in the output's dtype (the type cuBLASLt
  // documents for it). Batch 1, no bias or GELU, trans_a (cuBLASLt's transposed B). For the
  // weight gradient d_out^T @ in, that is the bias gradient (cuBLASLt's B is our A).
  void* bias_grad = nullptr;
};

// The fallback kernel (gemm_fallback.cu): same contract as GemmLt::run.
void launch_gemm_fallback(const GemmArgs& g, cudaStream_t s);

class GemmLt {
 public:
  static constexpr int kAutotuneCandidates = 8;

  GemmLt(cudaStream_t stream, size_t workspace_bytes, bool allow_tf32, bool autotune = false);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;

  // C = alpha op(A) op(B) + beta C (+ bias), row-major, on the stream given at construction.
  // No GELU or bias-gradient epilogue: those go through try_run.
  void run(const GemmArgs& g);
  // The same for a product with an epilogue the caller can do without (GELU, bias_grad):
  // false, with nothing run, where cuBLASLt declines the epilogue (no algorithm at the
  // heuristic, or the call refused, after which the plan stays declined): the caller
  // composes the product and the epilogue from other ops instead.
  bool try_run(const GemmArgs& g);

  // The SMs the products to come are planned for (cuBLASLt's SM count target): fewer than
  // the device has while a concurrent stream holds the rest (the CUDA backend's partitioned
  // optimizer update), so that a product's grid fits the SMs it can have instead of leaving
  // a partial wave waiting for SMs that stay taken; 0: the device's count. Each target has
  // plans (and autotune timings) of its own.
  void set_sm_count_target(int sms) { sm_count_target_ = sms > 0 ? sms : 0; }
  int sm_count_target() const { return sm_count_target_; }

  int64_t fallback_calls() const { return fallback_calls_; }
  // cuBLASLt products run by a plan whose descriptor holds an SM count target (read back
  // from it when the plan was made).
  int64_t sm_targeted_calls() const { return sm_targeted_calls_; }
  int64_t bias_grad_epilogue_calls() const { return bias_grad_epilogue_calls_; }
  size_t cached_plans() const { return plans_.size(); }
  // Plans timed so far, and those where an algorithm other than the heuristic's first won.
  int64_t autotuned_plans() const { return autotuned_plans_; }
  int64_t autotune_changes() const { return autotune_changes_; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool has_algo = false;  // false: use the fallback kernel
    int sm_count_target = 0;  // as the descriptor holds it (read back), 0: the device's count
    // Autotune: the heuristic's algorithms, best guess first; emptied once timed.
    std::vector<cublasLtMatmulAlgo_t> candidates;
  };
  using Key = std::array<int64_t, 23>;
  Plan& plan_for(const GemmArgs& g);
  static void destroy(Plan& p) noexcept;
  // One cublasLtMatmul of g with `algo` (pointers set on the plan's descriptor already).
  cublasStatus_t matmul(const Plan& p, const GemmArgs& g, const cublasLtMatmulAlgo_t& algo);
  // Times p's candidates on g's operands and keeps the fastest as p.algo.
  void autotune(Plan& p, const GemmArgs& g);

  cudaStream_t stream_;
  bool allow_tf32_;
  bool autotune_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  int sm_count_target_ = 0;
  bool said_sm_target_ = false;  // the log's line on the first targeted plan
  std::map<Key, Plan> plans_;
  // Autotune times one plan per key with m and k left out: BERT's MLM head has a new row
  // count (the masked tokens; k of its weight gradient) nearly every batch, and timing 8 algorithms for each would stall
  // step after step; the others of such a family keep the heuristic's choice.
  std::set<Key> tuned_families_;
  int64_t fallback_calls_ = 0;
  int64_t bias_grad_epilogue_calls_ = 0;
  int64_t sm_targeted_calls_ = 0;
  int64_t autotuned_plans_ = 0, autotune_changes_ = 0;
};

}  // namespace mics::cuda
