#pragma once
// Memory per device, planned from the layout and the model's own activation buffers
// (measured on a backend that allocates nothing): for --dry-run, for the planner table of
// --dry-run --cluster, and for choosing the partition size ("auto").
#include <cstdint>
#include <string>

#include "engine/config.h"
#include "model/param_layout.h"

namespace mics {

namespace sim { struct ClusterSpec; }

struct MemoryPlan {
  int64_t partition_size = 1;
  int64_t micro_batch = 0;
  bool checkpointing = false;  // activations kept only at layer inputs, one layer recomputed
  double working_params = 0;  // half-precision copy of the whole model (mixed precision, p = 1)
  // fp32 gradient accumulator shard (twice with every_microstep sync); on a single rank the
  // model's own gradient in the compute dtype instead (gradients_in_place)
  double grads = 0;
  bool grads_in_place = false;
  double master = 0;          // fp32 master weights
  double adam = 0;            // fp32 m and v
  double gathered = 0;        // gather slots: prefetch + 2 of the largest layer (p > 1)
  double grad_buffers = 0;    // three gradient working buffers of the largest layer + shards (none in place)
  double replication = 0;     // mics.replication_dtype "compute": the shard in half precision
  double activations = 0;     // activations and workspace of one micro-batch
  // The CUDA backend's padded copies for a vocabulary projection whose width is not a
  // multiple of 16 bytes (kernels/cuda/cuda_backend.cpp, padded_width): the weight padded
  // with zero rows, and the logits rows.
  double gemm_staging = 0;
  // The CUDA backend's workspaces: cuBLASLt's (allocated when the backend is made, before
  // the start-up memory check reads the free memory) and, with cuDNN's attention, its
  // backward's (the deterministic one keeps dP, B x H x T x T: 160 MiB at BERT's
  // 8 x 40 x 512^2, up to 1 GiB; past that the nondeterministic one, taken as an fp32 dQ
  // accumulator and the softmax sums, B x H x T x (4D + 4) bytes, until a GPU says).
  double gemm_workspace = 0;
  double attention_workspace = 0;

  double workspace() const { return gemm_workspace + attention_workspace; }
  double model_states() const { return working_params + grads + master + adam; }
  double total() const {
    return model_states() + gathered + grad_buffers + replication + activations + gemm_staging + workspace();
  }
};

// Bytes per device in the config's precision (fp32, or bf16/fp16 with fp32 master weights),
// for `world` ranks in all (world / partition_size replicas).
MemoryPlan plan_memory(const Config& config, int64_t world, int64_t partition_size, int64_t micro_batch,
                       bool checkpointing);

// Smallest partition size whose plan at the configured micro-batch and checkpointing fits
// `memory_gib` per device, among those `world` ranks can be split into (divisors of world
// that are whole nodes or divide a node), or with world 0 (a job not sized yet) among 1, 2,
// 4 ... up to ranks_per_node, then k times powers of two; ConfigError if none does.
int64_t auto_partition_size(const Config& config, int64_t world, int64_t ranks_per_node, double memory_gib);

// "model states 18.78 GiB, gathered 0.47 GiB, gradient buffers 0.52 GiB, activations
// 3.74 GiB": the plan's categories in one line, for logs and errors.
std::string describe_plan(const MemoryPlan& plan);

// When the configured plan does not fit `budget_bytes` per device: the knobs that would make
// it fit, each with its plan (a larger partition size dividing `world`, activation
// checkpointing, a smaller micro-batch), as one clause for an error message.
std::string memory_fit_advice(const Config& config, int64_t partition_size, int64_t world, double budget_bytes);

// The --dry-run report: parameter count, layout and memory per device of a run on `world`
// ranks, `ranks_per_node` a node, at partition size `partition_size` (resolved and checked
// by the caller; it divides world).
std::string dry_run_report(const Config& config, int64_t world, int64_t partition_size, int64_t ranks_per_node);

// --dry-run --cluster: the plan for every candidate p, micro-batch and checkpointing
// choice on the cluster's GPUs, and the smallest p that fits.
std::string planner_report(const Config& config, const sim::ClusterSpec& cluster);

}  // namespace mics
