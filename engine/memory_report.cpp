#include "engine/memory_report.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "engine/metrics.h"
#include "engine/sharded_param_store.h"
#include "engine/sim/cluster_spec.h"
#include "engine/sim/sim_backend.h"
#include "kernels/cuda/cuda_backend.h"  // CudaBackendOptions: plain C++, in every build
#include "model/model.h"

namespace mics {

namespace {
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kMaxPartition = 1 << 16;

int64_t largest_layer(const model::ParamLayout& layout) {
  int64_t best = 0;
  for (const model::LayerSpan& s : layout.layers()) best = std::max(best, s.size);
  return best;
}

// The activation bytes the model's own arena reserves in `dtype` (on a backend that
// allocates nothing).
double activation_bytes(model::ModelSpec spec, DType dtype, int64_t micro_batch, int64_t seq, bool checkpointing) {
  spec.activation_checkpointing = checkpointing;
  sim::ClusterSpec nothing;
  sim::Timeline unused;
  auto backend = sim::make_sim_backend(nothing, unused);
  return static_cast<double>(model::make_model(spec, *backend, dtype, micro_batch, seq, 128)->activation_bytes());
}

// Candidate partition sizes: powers of two up to k, then k times powers of two.
std::vector<int64_t> candidate_partitions(int64_t k, int64_t limit) {
  std::vector<int64_t> out;
  for (int64_t p = 1; p < k; p *= 2) out.push_back(p);
  for (int64_t p = k; p <= limit; p *= 2) out.push_back(p);
  return out;
}

std::string gib(double bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", bytes / kGiB);
  return s;
}
}  // namespace

MemoryPlan plan_memory(const Config& config, int64_t world, int64_t p, int64_t micro_batch, bool checkpointing) {
  const model::ModelSpec spec = config.model_spec();
  const model::ParamLayout layout = model::build_layout(spec, model::shard_multiple_for(p));
  const double shard = static_cast<double>(layout.total_elements()) / static_cast<double>(p);
  const double largest = static_cast<double>(largest_layer(layout));
  const bool mixed = config.train.precision != "fp32";
  const double compute = mixed ? 2.0 : 4.0;
  MemoryPlan b;
  b.partition_size = p;
  b.micro_batch = micro_batch;
  b.checkpointing = checkpointing;
  // As ShardedParamStore holds them: gathers cast from the fp32 master on the fly, so only
  // p = 1 keeps a half-precision copy of the whole model; gradients accumulate in fp32,
  // unless one rank uses the model's own (gradients_in_place).
  b.working_params = mixed && p == 1 ? 2.0 * shard : 0.0;
  b.grads_in_place = gradients_in_place(p, world / p, compute_dtype(config.train.precision),
                                       std::max<int64_t>(config.accumulation_steps(world, micro_batch), 1));
  b.grads = b.grads_in_place ? compute * shard
                             : 4.0 * shard * (config.mics.gradient_sync == "every_microstep" ? 2.0 : 1.0);
  b.master = 4.0 * shard;
  b.adam = 8.0 * shard;
  // With p = 1 nothing is gathered: the working copy is the whole model already.
  b.gathered = p > 1 ? compute * largest * static_cast<double>(config.mics.prefetch + 2) : 0.0;
  b.grad_buffers = b.grads_in_place ? 0.0 : 3.0 * compute * (largest + (p > 1 ? largest / static_cast<double>(p) : 0.0));
  // The shard in half precision for the two-hop all-reduce across replicas, where there are.
  const bool two_hop_replicas = world / p > 1 && config.mics.gradient_sync != "every_microstep";
  b.replication = mixed && config.mics.replication_dtype == "compute" && two_hop_replicas ? compute * shard : 0.0;
  b.activations = activation_bytes(spec, compute_dtype(config.train.precision), micro_batch, config.train.seq_len,
                                   checkpointing);
  if (config.runtime.backend == "cuda") {
    const int64_t per16 = static_cast<int64_t>(16 / compute);
    const int64_t padded = (spec.vocab + per16 - 1) / per16 * per16;
    if (padded != spec.vocab)  // at most every token of the micro-batch is a logits row
      b.gemm_staging = compute * static_cast<double>(padded) *
                       static_cast<double>(spec.hidden + micro_batch * config.train.seq_len);
    // cuBLASLt's workspace, a second one for the weight gradients' stream
    b.gemm_workspace = static_cast<double>(CudaBackendOptions{}.gemm_workspace_bytes) *
                       (config.runtime.overlap_weight_grads ? 2.0 : 1.0);
    if (config.runtime.attention == "cudnn") {
      const AttentionDims dims{micro_batch, config.train.seq_len, spec.heads,
                               spec.hidden / std::max<int64_t>(spec.heads, 1), spec.arch == model::Arch::gpt};
      const double deterministic = cudnn_deterministic_workspace_estimate(dims);
      // Past the budget, or asked for, the backend runs the nondeterministic backward: linear in T.
      const double bht = static_cast<double>(dims.batch * dims.heads * dims.seq);
      b.attention_workspace = config.runtime.cudnn_deterministic &&
                                      deterministic <= static_cast<double>(kCudnnDeterministicWorkspaceBudget)
                                  ? deterministic
                                  : bht * (4.0 * static_cast<double>(dims.head_dim) + 4.0) + 16.0 * (1 << 20);
    }
  }
  return b;
}

int64_t auto_partition_size(const Config& config, int64_t world, int64_t ranks_per_node, double memory_gib) {
  const int64_t k = std::max<int64_t>(ranks_per_node, 1);
  const auto fits = [&](int64_t p) {
    return plan_memory(config, std::max(world, p), p, config.train.micro_batch_size,
                       config.train.activation_checkpointing)
               .total() <= memory_gib * kGiB;
  };
  // With the ranks known, the sizes make_topology takes: divisors of N that are whole
  // nodes or divide a node.
  std::vector<int64_t> candidates;
  for (int64_t p = 1; p <= world; ++p)
    if (world % p == 0 && (p % k == 0 || k % p == 0)) candidates.push_back(p);
  if (world == 0) candidates = candidate_partitions(k, kMaxPartition);
  for (int64_t p : candidates)
    if (fits(p)) return p;
  if (world > 0)
    for (int64_t p : candidate_partitions(k, kMaxPartition))
      if (fits(p))
        throw ConfigError("'mics.partition_size' \"auto\": no partition size the " + std::to_string(world) +
                          " ranks can be split into fits " + gib(memory_gib * kGiB) +
                          " GiB per device ('runtime.device_memory_gb'); " + std::to_string(p) +
                          " would: launch a multiple of " + std::to_string(p) + " ranks, or lower "
                          "'train.micro_batch_size'" +
                          (config.train.activation_checkpointing ? "" : " or turn on 'train.activation_checkpointing'") +
                          ".");
  throw ConfigError("'mics.partition_size' \"auto\": model states and activations do not fit " +
                    gib(memory_gib * kGiB) + " GiB per device ('runtime.device_memory_gb') at any partition size, "
                    "even sharded over " + std::to_string(kMaxPartition) + " ranks: lower 'train.micro_batch_size'" +
                    (config.train.activation_checkpointing ? "" : " or turn on 'train.activation_checkpointing'") + ".");
}

std::string describe_plan(const MemoryPlan& b) {
  std::string out = "model states " + gib(b.model_states()) + " GiB";
  if (b.gathered > 0) out += ", gathered layers " + gib(b.gathered) + " GiB";
  out += ", gradient buffers " + gib(b.grad_buffers + b.replication) + " GiB";
  out += ", activations " + gib(b.activations) + " GiB";
  if (b.gemm_staging > 0) out += ", padded vocabulary projection " + gib(b.gemm_staging) + " GiB";
  if (b.workspace() > 0) out += ", workspaces " + gib(b.workspace()) + " GiB";
  return out;
}

// The largest partition size the advice looks at when nothing fits on the ranks at hand.
constexpr int64_t kLargestPartitionAdvised = 4096;

std::string memory_fit_advice(const Config& config, int64_t p, int64_t world, double budget_bytes) {
  const int64_t mb = config.train.micro_batch_size;
  const bool ckpt = config.train.activation_checkpointing;
  std::vector<std::string> fixes;
  for (int64_t q = p + 1; q <= world; ++q) {
    if (world % q != 0) continue;
    const MemoryPlan plan = plan_memory(config, world, q, mb, ckpt);
    if (plan.total() <= budget_bytes) {
      fixes.push_back("'mics.partition_size' " + std::to_string(q) + " (" + gib(plan.total()) + " GiB)");
      break;
    }
  }
  if (!ckpt) {
    const MemoryPlan plan = plan_memory(config, world, p, mb, true);
    if (plan.total() <= budget_bytes)
      fixes.push_back("'train.activation_checkpointing' true (" + gib(plan.total()) + " GiB)");
  }
  if (ckpt && config.train.keep_ffn_output) {  // one activation more per block than it needs
    Config lean = config;
    lean.train.keep_ffn_output = false;
    const MemoryPlan plan = plan_memory(lean, world, p, mb, true);
    if (plan.total() <= budget_bytes)
      fixes.push_back("'train.keep_ffn_output' false (" + gib(plan.total()) + " GiB)");
  }
  for (int64_t smaller = mb / 2; smaller >= 1; smaller /= 2) {
    if (config.accumulation_steps(world, smaller) == 0) continue;  // would need another global batch too
    const MemoryPlan plan = plan_memory(config, world, p, smaller, ckpt);
    if (plan.total() <= budget_bytes) {
      fixes.push_back("'train.micro_batch_size' " + std::to_string(smaller) + " (" + gib(plan.total()) +
                      " GiB, with more accumulation steps)");
      break;
    }
  }
  if (fixes.empty()) {
    // Nothing fits on these ranks: name the partition size (and so the number of GPUs) that would.
    const std::string here = "nothing fits on " + std::to_string(world) + (world == 1 ? " rank" : " ranks") +
                             " (no larger partition size, activation checkpointing or smaller micro-batch)";
    for (int64_t q = 2 * p; q <= kLargestPartitionAdvised; q *= 2) {
      const MemoryPlan plan = plan_memory(config, q, q, mb, ckpt);
      if (plan.total() <= budget_bytes)
        return here + "; 'mics.partition_size' " + std::to_string(q) + " would (" + gib(plan.total()) +
               " GiB per rank), which needs at least " + std::to_string(q) + " ranks: add GPUs";
    }
    return here + ", nor 'mics.partition_size' " + std::to_string(kLargestPartitionAdvised) +
           ": the micro-batch's activations alone exceed the budget";
  }
  std::string out = "any of these fits: ";
  for (size_t i = 0; i < fixes.size(); ++i) out += (i ? (i + 1 == fixes.size() ? ", or " : ", ") : "") + fixes[i];
  return out;
}

std::string dry_run_report(const Config& config, int64_t world, int64_t p, int64_t ranks_per_node) {
  const model::ModelSpec spec = config.model_spec();
  const double budget = config.runtime.device_memory_gb;
  const model::ParamLayout layout = model::build_layout(spec, model::shard_multiple_for(p));
  const MemoryPlan b = plan_memory(config, world, p, config.train.micro_batch_size,
                                   config.train.activation_checkpointing);
  const bool mixed = config.train.precision != "fp32";
  const char* half = config.train.precision.c_str();

  std::string out;
  char line[256];
  auto add = [&](const std::string& label, const std::string& value) {
    char row[320];
    std::snprintf(row, sizeof row, "  %-34s %s\n", label.c_str(), value.c_str());
    out += row;
  };
  char scaled[32];  // 10.082B, 0.86M
  const double count = static_cast<double>(layout.parameter_count());
  std::snprintf(scaled, sizeof scaled, count >= 1e9 ? "%.3fB" : count >= 1e6 ? "%.2fM" : "%.1fK",
                count / (count >= 1e9 ? 1e9 : count >= 1e6 ? 1e6 : 1e3));
  out += "dry run: " + config.source_name + " (nothing allocated)\n";
  add("model", config.model.type + ", " + std::to_string(spec.layers) + " layers, hidden " +
                   std::to_string(spec.hidden) + ", heads " + std::to_string(spec.heads) +
                   ", ffn " + std::to_string(spec.ffn) + ", vocab " + std::to_string(spec.vocab));
  add("parameters", std::to_string(layout.parameter_count()) + " (" + scaled + ")");
  add("flat buffer (aligned, padded)", std::to_string(layout.total_elements()) + " elements in " +
                                           std::to_string(layout.num_layers()) + " layer spans");
  add("partition size p", std::to_string(p) + (config.mics.partition_size == 0 ? " (auto)" : ""));
  const int64_t replicas = world / p;
  add("ranks planned", std::to_string(world) + " (" + std::to_string(ranks_per_node) + " per node, " +
                           std::to_string(replicas) +
                           (replicas == 1 ? " partition group" : " replicas of the partition group") +
                           "; --ranks N plans another size)");
  add("precision", mixed ? config.train.precision + " compute, fp32 master weights and Adam states"
                         : std::string("fp32"));
  add("attention", config.runtime.attention +
                       (config.runtime.attention_reason.empty() ? "" : " (auto: " + config.runtime.attention_reason + ")"));
  out += "model-state bytes per device (1/p of each):\n";
  if (b.working_params > 0) add(std::string(half) + " working copy (p = 1)", format_bytes(b.working_params));
  add(b.grads_in_place ? std::string(mixed ? half : "fp32") + " gradients (in place, 1 rank)" : "fp32 gradient accumulator",
      format_bytes(b.grads));
  add(mixed ? "fp32 master weights" : "fp32 parameters", format_bytes(b.master));
  add("fp32 Adam m and v", format_bytes(b.adam));
  add(b.working_params > 0 ? "model states" : "model states (16 bytes/param / p)", format_bytes(b.model_states()));
  out += "working memory per device:\n";
  if (p > 1) {
    std::snprintf(line, sizeof line, "gathered layers (%lld slots)", static_cast<long long>(config.mics.prefetch + 2));
    add(line, format_bytes(b.gathered));
  }
  if (!b.grads_in_place) add("gradient buffers (3 layers)", format_bytes(b.grad_buffers));
  if (b.replication > 0) add(std::string(half) + " replication all-reduce shard", format_bytes(b.replication));
  std::snprintf(line, sizeof line, "activations (%s%lld)", b.checkpointing ? "checkpointed, mb " : "micro-batch ",
                static_cast<long long>(b.micro_batch));
  add(line, format_bytes(b.activations) + (b.checkpointing && config.train.keep_ffn_output && config.model.type == "bert"
                                                ? " (each block's LN2 input kept)"
                                                : ""));
  if (b.gemm_staging > 0) add("padded vocab projection (CUDA)", format_bytes(b.gemm_staging));
  if (b.workspace() > 0)
    add(b.attention_workspace > 0 ? "workspaces (cuBLASLt, cuDNN)" : "workspace (cuBLASLt)",
        format_bytes(b.workspace()));
  add("total", format_bytes(b.total()));
  std::snprintf(line, sizeof line, "%.1f GiB per device", budget);
  add("runtime.device_memory_gb", std::string(line) +
                                      (b.total() <= budget * kGiB
                                           ? " (fits)"
                                           : " (does NOT fit: raise mics.partition_size or lower train.micro_batch_size)"));
  return out;
}

std::string planner_report(const Config& config, const sim::ClusterSpec& cluster) {
  const int64_t k = cluster.gpus_per_node;
  const double budget = cluster.memory_gib * kGiB;
  const int64_t mb = config.train.micro_batch_size;
  std::string out;
  char row[512];
  std::snprintf(row, sizeof row,
                "memory plan: %s on %s (%s, %.0f GiB per GPU, %d per node), %s, %s attention, micro-batch %lld, "
                "seq %lld\n"
                "GiB per GPU; ckpt: with activation checkpointing; 2x mb: total at twice the micro-batch, no ckpt\n\n",
                config.source_name.c_str(), cluster.name.c_str(), cluster.gpu_name.c_str(), cluster.memory_gib,
                cluster.gpus_per_node, config.train.precision.c_str(), config.runtime.attention.c_str(),
                static_cast<long long>(mb),
                static_cast<long long>(config.train.seq_len));
  out += row;
  std::snprintf(row, sizeof row, "%6s %8s %8s %8s %8s %9s %9s %9s %9s  %s\n", "p", "states", "gathered",
                "grad buf", "act", "act ckpt", "total", "tot ckpt", "2x mb", "fits");
  out += row;
  int64_t recommended = 0, recommended_ckpt = 0;
  for (int64_t p : candidate_partitions(k, 64 * k)) {
    // Planned for a cluster: every partition size has replicas.
    const int64_t world = 128 * k;
    const MemoryPlan off = plan_memory(config, world, p, mb, false), on = plan_memory(config, world, p, mb, true);
    const MemoryPlan twice = plan_memory(config, world, p, 2 * mb, false);
    const bool fits = off.total() <= budget, fits_ckpt = on.total() <= budget;
    if (fits && recommended == 0) recommended = p;
    if (fits_ckpt && recommended_ckpt == 0) recommended_ckpt = p;
    const std::string verdict = fits ? "yes" : fits_ckpt ? "with ckpt" : "no";
    std::snprintf(row, sizeof row, "%6lld %8s %8s %8s %8s %9s %9s %9s %9s  %s\n", static_cast<long long>(p),
                  gib(off.model_states()).c_str(), gib(off.gathered).c_str(), gib(off.grad_buffers + off.replication).c_str(),
                  gib(off.activations).c_str(), gib(on.activations).c_str(), gib(off.total()).c_str(),
                  gib(on.total()).c_str(), gib(twice.total()).c_str(), verdict.c_str());
    out += row;
  }
  out += "\n";
  // The recommendation follows the config's own checkpointing choice.
  const bool ckpt = config.train.activation_checkpointing;
  const int64_t chosen = ckpt ? recommended_ckpt : recommended;
  if (chosen > 0) {
    std::snprintf(row, sizeof row, "recommended: mics.partition_size = %lld, the smallest that fits %.0f GiB%s\n",
                  static_cast<long long>(chosen), cluster.memory_gib,
                  ckpt ? " with activation checkpointing (train.activation_checkpointing is on)"
                       : recommended_ckpt > 0 && recommended_ckpt < recommended
                             ? " (with train.activation_checkpointing = true a smaller one would)" : "");
  } else if (!ckpt && recommended_ckpt > 0) {
    std::snprintf(row, sizeof row,
                  "recommended: mics.partition_size = %lld with train.activation_checkpointing = true; nothing fits without it\n",
                  static_cast<long long>(recommended_ckpt));
  } else {
    std::snprintf(row, sizeof row, "nothing fits %.0f GiB up to p = %lld: lower train.micro_batch_size\n",
                  cluster.memory_gib, static_cast<long long>(64 * k));
  }
  out += row;
  return out;
}

}  // namespace mics
