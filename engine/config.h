#pragma once
// The run configuration: JSON sections model, train, data, mics, runtime, log, checkpoint. Parsing is
// strict: an unknown key, a wrong type or an impossible value is a ConfigError whose
// message is one sentence naming the key and what is accepted.
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/tensor.h"
#include "model/model_spec.h"

namespace mics {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ModelConfig {
  std::string type;              // "bert" | "gpt" (required)
  int64_t hidden = 0;            // required
  int64_t layers = 0;            // required
  int64_t heads = 0;             // required
  int64_t ffn = 0;               // 0: 4 * hidden
  int64_t vocab_size = 0;        // required
  int64_t max_positions = 0;     // 0: train.seq_len
  int64_t type_vocab_size = -1;  // -1: 2 for BERT, 0 for GPT
  double layernorm_eps = std::numeric_limits<double>::quiet_NaN();  // unset (JSON has no NaN): 1e-12 for BERT, 1e-5 for GPT
  double dropout = 0.0;
  double attention_dropout = 0.0;
  double init_std = 0.02;
};

struct TrainConfig {
  int64_t seq_len = 0;            // required
  int64_t micro_batch_size = 0;   // required
  int64_t global_batch_size = 0;  // 0: micro_batch_size * world size (no accumulation)
  int64_t steps = 0;              // required
  double lr = 0;                  // required
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  std::string lr_decay = "cosine";  // constant | linear | cosine
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;  // 0: off
  int64_t max_skipped_steps = 10;  // consecutive non-finite steps before the run stops
  double initial_loss_scale = 0;   // fp16 only; 0: 2^16
  int64_t seed = 1234;
  // fp32 | bf16 | fp16 | auto. auto resolves at load: fp32 on the CPU backend; on CUDA bf16
  // where the GPU has it (compute capability 8.0+), fp16 with loss scaling below (V100),
  // bf16 when no GPU is visible (planning on a login node: both are 2 bytes).
  std::string precision = "auto";
  std::string precision_reason;  // how "auto" resolved, for the log; empty when set explicitly
  bool activation_checkpointing = false;  // keep block inputs only; recompute each block in backward
  // With activation_checkpointing on a post-LN model (BERT): keep each block's second
  // LayerNorm input and statistics too, so the recompute skips the FFN's second product.
  bool keep_ffn_output = false;
};

struct DataConfig {
  std::string source = "synthetic";  // synthetic | text | shards
  std::string path;                  // file, directory or glob (text, shards)
  double mask_prob = 0.15;           // BERT
  int64_t mask_token_id = -1;        // BERT; -1: vocab_size - 1
  bool shuffle = true;
};

struct MicsConfig {
  int64_t partition_size = 1;  // 0 means "auto"
  std::string hierarchical_allgather = "auto";  // auto | true | false
  std::string gradient_sync = "two_hop";        // two_hop | every_microstep
  // fp32 | compute: the dtype of the two-hop all-reduce across replicas. fp32 sends the
  // accumulator as it is; compute casts it to the model's dtype first (half the bytes, as
  // the MiCS paper and docs/references.md's formula count, at half precision's rounding).
  std::string replication_dtype = "fp32";
  int64_t prefetch = 1;
};

struct RuntimeConfig {
  std::string backend = "cpu";  // cpu | cuda
  int64_t ranks_per_node = 0;   // 0: detect
  double device_memory_gb = 32.0;
  double comm_timeout_s = 600.0;  // a wait on other ranks longer than this ends the job
  // auto | mpi | nccl | staged: how ranks exchange data. auto: MPI on the CPU; on CUDA,
  // NCCL when every rank of a node has its own GPU, else MPI staged through host memory
  // ("staged" also runs on the CPU, where it tests the device path's logic).
  std::string communicator = "auto";
  // auto | materialized | fused | cudnn: attention keeping the B x H x T x T probabilities
  // for the backward, or only each row's log-sum-exp (recomputing them; less memory) with
  // the engine's own kernels, or the same through cuDNN's fused attention (CUDA only).
  // auto: cudnn where it runs (the fastest measured: docs/gpu-results.md), else materialized.
  std::string attention = "auto";
  std::string attention_reason;  // how "auto" resolved, for the log; empty when set explicitly
  // cuDNN's attention backward: its deterministic algorithm (true: the same bits run to
  // run; it keeps B x H x T x T values in its workspace, so past 1 GiB of them "cudnn" runs
  // the other, with a warning, and "auto" our fused kernels), or its nondeterministic one
  // (false: atomics, workspace linear in T; faster where cuDNN's deterministic kernel is
  // slow). Needs the CUDA backend with attention "cudnn" or "auto".
  bool cudnn_deterministic = true;
  // CUDA: time the heuristic's top cuBLASLt algorithms for each GEMM shape at its first
  // call and keep the fastest (the first step runs slower; results can differ in the last
  // bits from run to run, as the winner may).
  bool gemm_autotune = false;
  // Defer each layer's optimizer update to its first use in the next step (DeferredUpdates):
  // on CUDA the updates run on a second stream alongside the next forward; on the CPU the
  // same arithmetic, at each layer's first use.
  bool overlap_optimizer = false;
  // CUDA, with overlap_optimizer: the most SMs the overlapped update may hold at once (one
  // block of 1024 threads each), leaving the rest to the forward; 0: no bound (its blocks,
  // at the lowest stream priority, take whatever the forward's leave).
  int64_t overlap_optimizer_sms = 0;
  // With overlap_optimizer_sms: the bounded update in chunks of about 0.1 ms, at whose ends
  // the forward's kernels may take the SMs back (true), or each layer's update as one launch
  // holding its N SMs until it is done, the forward keeping the others (false).
  bool overlap_optimizer_chunked = true;
  // CUDA: each linear layer's weight gradient (and bias gradient) on a second stream,
  // concurrently with its input gradient's product; the same products, the same bits.
  bool overlap_weight_grads = false;
};

struct LogConfig {
  int64_t every = 10;
  std::string level = "info";  // trace | debug | info | warn | error
  std::string metrics;         // JSON-lines file; empty: none
};

struct CheckpointConfig {
  std::string dir;    // where step-NNNNNN/ checkpoints go; empty: no checkpoints
  int64_t every = 0;  // steps between checkpoints (the last step is always saved); 0: off
  int64_t keep = 3;   // newest checkpoints kept; 0 keeps all
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  MicsConfig mics;
  RuntimeConfig runtime;
  LogConfig log;
  CheckpointConfig checkpoint;
  std::string source_name;  // the file it came from, for messages

  model::ModelSpec model_spec() const;
  nlohmann::json to_json() const;  // fully resolved, defaults filled in
  // Micro-steps per optimizer step on `world` ranks at `micro_batch` samples each:
  // train.global_batch_size / (micro_batch x world), 1 when that key is 0; 0 when it does not
  // divide (the trainer refuses that; the memory advice skips it).
  int64_t accumulation_steps(int64_t world, int64_t micro_batch) const;
  // The same at train.micro_batch_size, or ConfigError naming the file and key.
  int64_t checked_accumulation_steps(int64_t world) const;
};

// The config as it would resolve on another machine's GPU (compute capability major * 10 +
// minor, the GPU's name for the reasons): train.precision and runtime.attention that were
// "auto" are resolved again for it; explicit settings are kept; 0 changes nothing. For
// planning and simulating a cluster (--dry-run --cluster, --simulate) from a machine
// without its GPUs.
Config resolved_for_gpu(const Config& config, int compute_capability, const std::string& gpu);

// train.precision "auto" for a backend: fp32 on "cpu"; on "cuda" bf16 at compute capability
// (major * 10 + minor) 80 and above, fp16 below, bf16 when it is 0 (no GPU visible).
std::string auto_precision(const std::string& backend, int compute_capability);

// The model's compute dtype for train.precision ("fp32", "bf16", "fp16").
DType compute_dtype(const std::string& precision);

// Parses and validates. `overrides` are "key.path=value" strings applied first (--set);
// a value that parses as JSON is taken as JSON, anything else as a string.
Config parse_config(const nlohmann::json& doc, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace mics
