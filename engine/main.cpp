// mics-train: command line, start-up checks, and the top-level error handling that turns
// any failure into one clear message and a non-zero exit on every rank.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <limits>
#include <string>
#include <vector>

#include "data/data_source.h"
#include "engine/build_info.h"
#include "engine/checkpoint.h"
#include "engine/comm/communicator.h"
#include "engine/comm/nccl_communicator.h"
#include "engine/config.h"
#include "engine/hf_interchange.h"
#include "engine/safetensors.h"
#include "engine/memory_report.h"
#include "engine/op_profile.h"
#include "engine/sim/cluster_spec.h"
#include "engine/sim/simulate.h"
#include "engine/process_env.h"
#include "engine/stop_signal.h"
#include "engine/topology.h"
#include "engine/trainer.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/ops.h"

namespace {

constexpr int kExitFailure = 1;   // a run that started and failed
constexpr int kExitBadInput = 2;  // bad flags, config or data

struct Options {
  std::string config;
  std::vector<std::string> sets;
  int64_t steps = 0;
  std::string metrics;
  std::string log_level;
  bool dry_run = false;
  bool profile = false;
  std::string resume;
  std::string init_from;
  // export
  std::string checkpoint, out, format = "safetensors";
  // simulation and planning
  std::string simulate, cluster, sim_out;
  std::vector<int> nodes;
  std::vector<std::string> modes = {"mics", "zero3", "dp"};
  int64_t per_gpu_batch = 0;
  int64_t ranks = 0;  // --dry-run --ranks N
};

// --simulate: the weak-scaling table of the config on a described cluster, no GPUs needed.
int simulate(const Options& o, const mics::Config& local_config) {
  const mics::sim::ClusterSpec cluster = mics::sim::load_cluster(o.simulate);
  // "auto" settings as the cluster's GPUs would resolve them, not this machine's.
  const mics::Config config = mics::resolved_for_gpu(local_config, cluster.compute_capability, cluster.gpu_name);
  if (!o.sim_out.empty()) mics::sim::check_results_path(o.sim_out);  // before minutes of work, not after
  if (config.runtime.backend == "cpu")  // what is priced is the config as written
    std::fprintf(stderr,
                 "mics-train: warning: %s has 'runtime.backend' \"cpu\": the cluster's GPUs are priced running it as "
                 "written (%s, %s attention); set runtime.backend=\"cuda\" to price the GPU path\n",
                 config.source_name.c_str(), config.train.precision.c_str(), config.runtime.attention.c_str());
  mics::sim::SweepRequest request;
  request.nodes = o.nodes.empty() ? std::vector<int>{1, 2, 4, 8} : o.nodes;
  std::sort(request.nodes.begin(), request.nodes.end());  // one row per count, smallest first (as scripts/sweep)
  request.nodes.erase(std::unique(request.nodes.begin(), request.nodes.end()), request.nodes.end());
  request.modes = o.modes;
  request.per_gpu_batch = o.per_gpu_batch;
  const auto rows = mics::sim::simulate_sweep(config, cluster, request);
  std::fputs(mics::sim::format_table(config, cluster, rows).c_str(), stdout);
  if (!o.sim_out.empty()) {
    mics::sim::write_results(o.sim_out, config, cluster, rows);
    std::printf("\nwrote %s\n", o.sim_out.c_str());
  }
  return 0;
}

// mics-train export: a checkpoint's weights in Hugging Face names, as one .safetensors file
// or (--format hf) a folder with model.safetensors and config.json.
int export_weights(const Options& o) {
  namespace fs = std::filesystem;
  // A checkpoint.dir (no manifest of its own) stands for the checkpoint its `latest` names.
  fs::path checkpoint = o.checkpoint;
  std::string name;
  const bool via_latest = !fs::exists(checkpoint / "manifest.json") && (std::ifstream(checkpoint / "latest") >> name);
  if (via_latest) checkpoint /= name;
  // Writing into the checkpoint being read could replace one of its files (a shard) and
  // break it.
  auto resolved = [](const fs::path& p) {  // absolute, links followed, no trailing separator
    fs::path r = fs::weakly_canonical(p);
    return r.filename().empty() ? r.parent_path() : r;
  };
  const fs::path source = resolved(checkpoint), target = resolved(o.out);
  const auto [end, ignored] = std::mismatch(source.begin(), source.end(), target.begin(), target.end());
  if (end == source.end())
    throw mics::CheckpointError("--out " + o.out + " lies inside the checkpoint being exported (" + checkpoint.string() +
                                "); write it elsewhere.");
  // The writes rename a new file over the old, which would replace a device, a fifo or a
  // folder (or, with --format hf, fail on a file where the folder goes): refused before
  // anything is read.
  if (o.format == "hf") {
    if (fs::exists(o.out) && !fs::is_directory(o.out))
      throw mics::CheckpointError("--out " + o.out + " exists and is not a directory; --format hf writes a folder.");
    for (const char* file : {"model.safetensors", "config.json"})
      if (const fs::path p = fs::path(o.out) / file; fs::exists(p) && !fs::is_regular_file(p))
        throw mics::CheckpointError(p.string() + " exists and is not a regular file; export would replace it.");
  } else if (fs::exists(o.out) && !fs::is_regular_file(o.out)) {
    throw mics::CheckpointError("--out " + o.out + " exists and is not a regular file; export writes one .safetensors "
                                "file (a folder with --format hf).");
  }
  if (via_latest) std::printf("%s names %s\n", (fs::path(o.checkpoint) / "latest").lexically_normal().c_str(), name.c_str());
  const mics::CheckpointWeights w = mics::read_checkpoint_weights(checkpoint.string());
  const mics::model::ModelSpec spec = w.config.model_spec();
  const mics::TensorFile file = mics::to_hf(spec, w.tensors);
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "mics-train"}};
  if (o.format == "hf") {
    fs::create_directories(o.out);
    mics::write_safetensors((fs::path(o.out) / "model.safetensors").string(), file, meta);
    mics::write_hf_config((fs::path(o.out) / "config.json").string(), spec);
  } else {
    mics::write_safetensors(o.out, file, meta);
  }
  std::printf("exported %zu tensors of %s to %s\n", file.size(), checkpoint.c_str(), o.out.c_str());
  return 0;
}

void setup_logging(const mics::ProcessEnv& env, const std::string& level) {
  auto logger = spdlog::stderr_color_mt("mics");
  logger->set_pattern(env.world() > 1 ? "[%H:%M:%S] [rank " + std::to_string(env.rank()) + "] [%^%l%$] %v"
                                      : "[%H:%M:%S] [%^%l%$] %v");
  spdlog::set_default_logger(logger);
  // Only rank 0 narrates; the others speak up for warnings and errors.
  spdlog::set_level(env.rank() == 0 ? spdlog::level::from_str(level) : spdlog::level::warn);
}

mics::Config resolve(const Options& o) {
  std::vector<std::string> sets = o.sets;
  if (o.steps > 0) sets.push_back("train.steps=" + std::to_string(o.steps));
  if (!o.metrics.empty()) sets.push_back("log.metrics=" + nlohmann::json(o.metrics).dump());
  if (!o.log_level.empty()) sets.push_back("log.level=" + nlohmann::json(o.log_level).dump());
  return mics::load_config(o.config, sets);
}

// What can be refused before anything is logged or allocated: the backend and the
// placement of this job's ranks into nodes and groups.
// The topology of a run of `world` ranks as rank `rank`: the config's partition size, or with
// "auto" the smallest that fits runtime.device_memory_gb and divides the world; ranks per node
// from runtime.ranks_per_node, else as launched. ConfigError naming the file when it cannot be.
mics::Topology resolve_topology(const mics::Config& config, int rank, int world, int launched_per_node) {
  const int k = config.runtime.ranks_per_node > 0 ? static_cast<int>(config.runtime.ranks_per_node) : launched_per_node;
  try {
    const int p = static_cast<int>(config.mics.partition_size > 0
                                       ? config.mics.partition_size
                                       : mics::auto_partition_size(config, world, k, config.runtime.device_memory_gb));
    return mics::make_topology(rank, world, k, p, config.mics.hierarchical_allgather);
  } catch (const mics::ConfigError& e) {
    throw mics::ConfigError(config.source_name + ": " + e.what());
  }
}

// The engine places rank r on node r / k (its groups and the hierarchical gather follow
// from that). Where k comes from the launch, check that the launch agrees, on every rank
// together: the same number of ranks on every node (else the ranks would build different
// groups and wait on each other forever), placed in blocks (else the "intra-node" groups
// span nodes: correct, but their traffic crosses the network).
void check_placement(const mics::Config& config, const mics::ProcessEnv& env) {
  if (config.runtime.ranks_per_node > 0 || env.world() == 1) return;  // set by the config: emulated nodes
  int first_node = env.ranks_per_node();
  mics::world_broadcast(&first_node, sizeof first_node, 0);
  if (!mics::world_all(env.ranks_per_node() == first_node))
    throw mics::ConfigError("the nodes of this job run different numbers of ranks (rank 0's node runs " +
                            std::to_string(first_node) +
                            "); mics-train needs the same number on every node: launch as many ranks per node "
                            "(srun --ntasks-per-node, mpirun --npernode), or set runtime.ranks_per_node");
  if (!mics::world_all(env.local_rank() == env.rank() % env.ranks_per_node()))
    spdlog::warn("the ranks are not placed in blocks of {} per node (mpirun --map-by node, srun -m cyclic?): "
                 "mics-train takes ranks r..r+{} as one node, so its intra-node groups would cross nodes; launch "
                 "with block placement (mpirun --map-by slot, srun -m block) for the traffic it plans",
                 env.ranks_per_node(), env.ranks_per_node() - 1);
}

mics::Topology check_runnable(const mics::Config& config, const mics::ProcessEnv& env) {
  if (config.runtime.backend == "cuda" && !mics::cuda_backend_built())
    throw mics::ConfigError(config.source_name +
                            ": 'runtime.backend' \"cuda\" is not available in this build (configure with nvcc "
                            "installed and -DMICS_CUDA=ON); use \"cpu\".");
  if (config.runtime.backend == "cuda" && mics::cuda_device_count() == 0)
    throw mics::ConfigError(config.source_name +
                            ": 'runtime.backend' is \"cuda\" but no CUDA device is visible on this node; use \"cpu\".");
  return resolve_topology(config, env.rank(), env.world(), env.ranks_per_node());
}

// --dry-run: the memory plan of a run on `ranks` ranks (--ranks; else the ranks launched,
// when there are several), its topology and batch checked as that run would check them. A
// single process (a login node) plans one partition group at the config's p.
std::string dry_run(const mics::Config& config, const mics::ProcessEnv& env, int64_t ranks) {
  if (ranks > std::numeric_limits<int>::max())
    throw mics::ConfigError("--ranks " + std::to_string(ranks) + " is more ranks than a job can have.");
  if (ranks == 0 && env.world() > 1) ranks = env.world();
  if (ranks > 0) {
    const mics::Topology t = resolve_topology(config, 0, static_cast<int>(ranks), env.ranks_per_node());
    config.checked_accumulation_steps(t.world);
    return mics::dry_run_report(config, t.world, t.partition_size, t.ranks_per_node);
  }
  const int k = config.runtime.ranks_per_node > 0 ? static_cast<int>(config.runtime.ranks_per_node) : 1;
  const int64_t p = config.mics.partition_size > 0
                        ? config.mics.partition_size
                        : mics::auto_partition_size(config, 0, k, config.runtime.device_memory_gb);
  return mics::dry_run_report(config, p, p, k);
}

// The CPU backend over MPI, or a GPU per rank (local rank modulo the node's GPUs) with NCCL
// or, when ranks share a GPU, MPI staged through host memory.
struct Runtime {
  std::unique_ptr<mics::Backend> backend;
  mics::TrainerRuntime trainer;
};

// Before the model allocates anything: the memory this rank plans (model states, gathered
// layers, gradient buffers, activations, cuDNN's workspace) against its share of its GPU's
// free memory, which the backend's own start-up buffers (cuBLASLt's workspace, a few small
// scratch buffers) have already left. All ranks decide together, so a rank whose GPU is
// short cannot leave the others waiting.
// `sharing`: the ranks of this node on this GPU, this one included.
void check_device_memory(const mics::Config& config, const mics::Topology& topology, int device, int sharing) {
  mics::world_all(true);  // every rank's CUDA context and backend exist, the model does not
  size_t free_bytes = 0, total_bytes = 0;
  const bool known = mics::cuda_memory_info(device, free_bytes, total_bytes);
  mics::MemoryPlan plan = mics::plan_memory(config, topology.world, topology.partition_size, config.train.micro_batch_size,
                                            config.train.activation_checkpointing);
  plan.gemm_workspace = 0;  // allocated with the backend: not in the free memory read below
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const double budget = static_cast<double>(free_bytes) / sharing;
  std::string error;
  if (!known) {
    spdlog::warn("GPU {}: free memory unknown; this rank plans {:.2f} GiB ({})", device, plan.total() / kGiB,
                 mics::describe_plan(plan));
  } else {
    spdlog::info("GPU {} memory: this rank plans {:.2f} GiB ({}) of {:.2f} GiB free per rank ({} rank(s) share the "
                 "GPU, {:.2f} GiB total)", device, plan.total() / kGiB, mics::describe_plan(plan), budget / kGiB, sharing,
                 static_cast<double>(total_bytes) / kGiB);
    if (plan.total() > budget) {
      char head[200];
      std::snprintf(head, sizeof head, "GPU %d (%s) has %.2f GiB free per rank, but ", device,
                    mics::cuda_device_name(device).c_str(), budget / kGiB);
      char need[64];
      std::snprintf(need, sizeof need, "%.2f GiB", plan.total() / kGiB);
      error = config.source_name + ": " + head + "this configuration plans " + need + " per rank (" +
              mics::describe_plan(plan) + "); " +
              mics::memory_fit_advice(config, topology.partition_size, topology.world, budget) + ".";
    } else if (plan.total() > 0.9 * budget) {
      spdlog::warn("GPU {}: the plan leaves under 10% of free memory for NCCL, cuBLASLt and the allocator", device);
    }
  }
  if (!mics::world_all(error.empty()))
    throw mics::ConfigError(error.empty() ? "another rank's GPU lacks the memory for this configuration; see its message."
                                          : error);
}

Runtime make_runtime(const mics::Config& config, const mics::Topology& topology, const mics::ProcessEnv& env) {
  Runtime r;
  if (config.runtime.backend == "cpu") {
    r.backend = mics::make_cpu_backend();
    if (config.runtime.communicator == "staged")
      r.trainer.groups = mics::build_device_groups(topology, *r.backend, "staged", nullptr);
    return r;
  }
  const int devices = mics::cuda_device_count();
  const int device = env.local_rank() % devices;
  mics::CudaBackendOptions options;
  options.cudnn_attention = config.runtime.attention == "cudnn";
  options.cudnn_attention_fallback = options.cudnn_attention && !config.runtime.attention_reason.empty();
  options.cudnn_deterministic = config.runtime.cudnn_deterministic;
  options.gemm_autotune = config.runtime.gemm_autotune;
  options.weight_grad_stream = config.runtime.overlap_weight_grads;
  if (options.weight_grad_stream)
    spdlog::info("runtime.overlap_weight_grads: each linear layer's weight gradients on a second stream, beside its "
                 "input gradient's product");
  options.side_queue_sms = static_cast<int>(config.runtime.overlap_optimizer_sms);
  options.side_queue_chunked = config.runtime.overlap_optimizer_chunked;
  r.backend = mics::make_cuda_backend(device, options);
  // The ranks on this GPU, told by its PCI bus id: a rank bound to one GPU (srun
  // --gpus-per-task, a CUDA_VISIBLE_DEVICES of its own) sees one device whatever the node
  // has, so the visible count alone would take 8 such ranks for 8 sharing one GPU.
  // (Every rank of the node takes part in the exchange, a bus id or not.)
  const std::string bus = mics::cuda_device_pci_bus_id(device);
  const int local = env.ranks_per_node();
  const int same_bus = env.ranks_on_node_with(bus);
  const int sharing = !bus.empty() ? same_bus : (device < local ? (local - 1 - device) / devices + 1 : 1);
  check_device_memory(config, topology, device, sharing);
  // One decision for the whole job: mixed nodes must not pick different communicators.
  const bool exclusive = mics::world_all(sharing == 1);
  std::string kind = config.runtime.communicator;
  if (kind == "auto") {
    kind = exclusive && mics::nccl_available() ? "nccl" : "staged";
    if (exclusive && !mics::nccl_available())
      spdlog::warn("this build has no NCCL (it was configured without it): the GPUs exchange data over MPI "
                   "staged through host memory, much slower across nodes");
  }
  if (kind == "nccl" && !mics::nccl_available())
    throw mics::ConfigError(config.source_name + ": 'runtime.communicator' \"nccl\" is not in this build (configure "
                            "with NCCL installed); use \"staged\" or \"auto\".");
  if (kind == "nccl" && !exclusive)
    throw mics::ConfigError(config.source_name + ": 'runtime.communicator' \"nccl\" needs a GPU per rank, but " +
                            (sharing > 1 ? std::to_string(sharing) + " ranks share GPU " + bus + " on this node"
                                         : std::string("ranks share a GPU on another node")) +
                            " (NCCL refuses two ranks on one GPU); use \"staged\" or \"auto\".");
  spdlog::info("device: GPU {} ({}, bus {}) of {} on this node, {} rank(s) on it; communicator {}", device,
               mics::cuda_device_name(device), bus.empty() ? "unknown" : bus, devices, sharing, kind);
  r.trainer.groups = mics::build_device_groups(topology, *r.backend, kind, mics::cuda_stream(*r.backend));
  return r;
}

// --profile: rank 0's time per backend op over the steps after the first (warm-up), and
// what the ops leave uncovered, printed when the run ends.
struct ProfileWindow {
  using Clock = std::chrono::steady_clock;
  mics::OpProfile ops;       // what the profiling backend records
  mics::OpProfile at_step;   // ops as of the last completed step (no checkpoint's copies)
  mics::OpProfile before_checkpoint_ops;
  int64_t first_done = -1, last_done = -1;
  Clock::time_point start, end, checkpoint_start;
  double checkpoints_s = 0, checkpoints_s_at_end = 0;  // time spent writing checkpoints

  void after_step(int64_t done) {
    ops.settle();  // read the step's marks (on a device timeline, now that the step is queued)
    if (first_done < 0) {  // the first step of this run: warm-up, not counted
      ops.reset();
      first_done = done;
      start = Clock::now();
      checkpoints_s = 0;
    }
    last_done = done;
    end = Clock::now();  // not the final checkpoint after the last step
    checkpoints_s_at_end = checkpoints_s;
    at_step = ops;
  }
  // A checkpoint written during the run: neither its copies nor its time are a step's.
  void before_checkpoint() {
    ops.settle();
    before_checkpoint_ops = ops;
    checkpoint_start = Clock::now();
  }
  void after_checkpoint() {
    ops.settle();
    ops = before_checkpoint_ops;
    checkpoints_s += std::chrono::duration<double>(Clock::now() - checkpoint_start).count();
  }
  void report() const {
    const int64_t steps = last_done - first_done;
    if (steps <= 0) {
      spdlog::warn("--profile: the run ended before a step after the first (warm-up) one; nothing to report");
      return;
    }
    const double step_s =
        (std::chrono::duration<double>(end - start).count() - checkpoints_s_at_end) / static_cast<double>(steps);
    spdlog::info("op profile of rank 0, steps {}-{} ({}):\n{}", first_done + 1, last_done, at_step.timing(),
                 at_step.table(step_s, steps));
  }
};

// The errors every rank reaches together, with their exit codes: the run unwinds and
// exits. -1: a failure of this rank alone.
int agreed_exit_code(const std::exception& e) {
  if (dynamic_cast<const mics::ConfigError*>(&e)) return kExitBadInput;  // every rank reads the same config
  if (dynamic_cast<const mics::TrainingError*>(&e)) return kExitFailure;  // every rank reached the same decision
  if (dynamic_cast<const mics::SafetensorsError*>(&e)) return kExitBadInput;  // every rank reads the same file
  // (Checkpoints: every rank agreed on the failure before throwing; a write that failed is
  // a run that started and failed.)
  if (dynamic_cast<const mics::CheckpointWriteError*>(&e)) return kExitFailure;
  if (dynamic_cast<const mics::CheckpointError*>(&e)) return kExitBadInput;
  if (dynamic_cast<const mics::data::DataError*>(&e)) return kExitBadInput;
  return -1;
}

// A failure of this rank alone ends the job at once: its peers may be waiting in
// collectives for it, and its own collectives may still be writing buffers that unwinding
// would free.
[[noreturn]] void fail_rank(const mics::ProcessEnv& env, const std::exception& e) {
  std::fprintf(stderr, "mics-train: rank %d failed: %s\n", env.rank(), e.what());
  mics::abort_nccl();  // peers blocked in NCCL collectives return instead of waiting forever
  env.abort_job(kExitFailure);
}

int train(const mics::Config& config, const mics::Topology& topology, const mics::ProcessEnv& env,
          const std::string& resume, const std::string& init_from, bool profile) {
  spdlog::info("{}", topology.describe());
  if (!config.train.precision_reason.empty())
    spdlog::info("train.precision auto: {} ({})", config.train.precision, config.train.precision_reason);
  if (!config.runtime.attention_reason.empty() && config.runtime.backend == "cuda")  // the CPU has one attention
    spdlog::info("runtime.attention auto: {} ({})", config.runtime.attention, config.runtime.attention_reason);
  if (!config.runtime.cudnn_deterministic && config.runtime.attention != "cudnn")  // "auto" chose another
    spdlog::warn("'runtime.cudnn_deterministic' false changes nothing here: the attention is \"{}\", not cuDNN's",
                 config.runtime.attention);
  mics::set_comm_timeout(config.runtime.comm_timeout_s);
  // The checkpoint --resume continues from ("" for none), decided on rank 0 for every rank.
  const std::string resume_from = mics::resolve_resume(config, topology, resume);
  mics::check_checkpoint_dir(config, topology, resume_from);
  Runtime runtime = make_runtime(config, topology, env);
  ProfileWindow window;
  if (profile) {
    // The communicators were built on the real backend (its stream, its copies): only the
    // model's and the store's ops go through the profiler.
    runtime.backend = mics::make_profiling_backend(std::move(runtime.backend), window.ops);
    runtime.trainer.after_step = [&window](int64_t done) { window.after_step(done); };
    runtime.trainer.before_checkpoint = [&window] { window.before_checkpoint(); };
    runtime.trainer.after_checkpoint = [&window] { window.after_checkpoint(); };
  }
  mics::Trainer trainer(config, *runtime.backend, topology, std::move(runtime.trainer));
  try {
    if (!init_from.empty()) trainer.init_from(init_from);
    if (!resume_from.empty()) {
      trainer.resume(resume_from);
    } else if (resume == "auto") {  // a requeued job that finds no checkpoint starts
      // (scripts/slurm/mics-train.sbatch passes --resume auto to every job, with checkpoints or without.)
      if (config.checkpoint.dir.empty())
        spdlog::warn("--resume auto: no checkpoint.dir is set, so this run writes no checkpoints and a requeued job "
                     "starts over from step 0");
      else spdlog::info("--resume auto: no checkpoint in {} yet; starting from step 0", config.checkpoint.dir);
      trainer.start_over();
    }
    const std::vector<double> losses = trainer.run();
    if (profile && env.rank() == 0) window.report();
    if (!losses.empty())
      spdlog::info("{}: {} steps, loss {:.4f} -> {:.4f}", trainer.preempted() ? "stopped" : "done", losses.size(),
                   losses.front(), losses.back());
    if (trainer.preempted()) return mics::kExitPreempted;
    return 0;
  } catch (const std::exception& e) {
    if (agreed_exit_code(e) < 0) fail_rank(env, e);  // here, while the trainer's buffers live
    throw;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mics-train: trains BERT and GPT models with MiCS sharding"};
  Options o;
  app.add_option("--config", o.config, "JSON run configuration (required unless a subcommand is given)")
      ->check(CLI::ExistingFile);
  app.add_option("--set", o.sets, "override a config key: --set train.lr=3e-4 (repeatable)");
  // CLI::PositiveNumber would report "not in range 0.000000 to 1797693134...".
  const CLI::Validator positive_integer(
      [](const std::string& v) {
        const bool ok = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos &&
                        v.find_first_not_of('0') != std::string::npos;
        return ok ? std::string() : "must be a positive integer, got '" + v + "'";
      },
      "POSITIVE");
  app.add_option("--steps", o.steps, "number of optimizer steps (overrides train.steps)")->check(positive_integer);
  app.add_option("--metrics", o.metrics, "append one JSON object per logged step to FILE");
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_option("--resume", o.resume,
                 "continue from a checkpoint directory, 'latest' in checkpoint.dir, or 'auto' (latest if any)");
  app.add_option("--init-from", o.init_from,
                 "start from Hugging Face weights: a .safetensors file or a folder with model.safetensors");
  CLI::App* exporter = app.add_subcommand("export", "write a checkpoint's weights with Hugging Face names");
  exporter->add_option("--checkpoint", o.checkpoint, "checkpoint directory (step-NNNNNN), or a checkpoint.dir for its latest")->required();
  exporter->add_option("--out", o.out, "output .safetensors file, or folder with --format hf")->required();
  exporter->add_option("--format", o.format, "safetensors (one file) or hf (folder with config.json)")
      ->check(CLI::IsMember({"safetensors", "hf"}));
  app.add_flag("--profile", o.profile,
               "time every backend op (CUDA events on a GPU; the host clock around each on the CPU) and print where "
               "rank 0's steps go");
  app.add_flag("--dry-run", o.dry_run,
               "print parameter count and memory per device, allocate nothing");
  app.add_option("--ranks", o.ranks,
                 "with --dry-run: plan a job of N ranks (default: the ranks launched, or one partition group); "
                 "set runtime.ranks_per_node to the job's GPUs per node")
      ->check(positive_integer);
  app.add_option("--cluster", o.cluster, "with --dry-run: plan memory on this cluster file for every partition size")
      ->check(CLI::ExistingFile);
  app.add_option("--simulate", o.simulate,
                 "predict step time and scaling on a cluster file (configs/clusters/) instead of training")
      ->check(CLI::ExistingFile);
  app.add_option("--nodes", o.nodes, "with --simulate: node counts, e.g. 2,4,8,16 (default 1,2,4,8)")
      ->delimiter(',')->check(positive_integer);
  CLI::Option* modes = app.add_option("--modes", o.modes, "with --simulate: any of mics, zero3, dp (default all three)")
                           ->delimiter(',')->check(CLI::IsMember({"mics", "zero3", "dp"}));
  app.add_option("--per-gpu-batch", o.per_gpu_batch,
                 "with --simulate: samples per GPU per step (default: global batch / GPUs of the smallest count)")
      ->check(positive_integer);
  app.add_option("--out", o.sim_out, "with --simulate: also write the results to FILE.csv or FILE.json");
  app.set_version_flag("--version", "mics-train " + mics::build_info(), "print the commit and build of this binary");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // One line like every other refusal, rather than CLI11's two.
    std::fprintf(stderr, "mics-train: error: %s (see --help).\n", e.what());
    return kExitBadInput;
  }

  if (exporter->parsed()) {
    try {
      return export_weights(o);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mics-train: error: %s\n", e.what());
      return kExitBadInput;
    }
  }
  if (o.config.empty()) {
    std::fprintf(stderr, "mics-train: error: --config is required.\n");
    return kExitBadInput;
  }
  if (o.profile && (o.dry_run || !o.simulate.empty())) {
    std::fprintf(stderr, "mics-train: error: --profile times a training run; it does not go with --dry-run or --simulate.\n");
    return kExitBadInput;
  }
  if (o.ranks > 0 && (!o.dry_run || !o.cluster.empty())) {
    std::fprintf(stderr, "mics-train: error: --ranks goes with --dry-run (without --cluster, which plans its own cluster's sizes).\n");
    return kExitBadInput;
  }
  if (o.dry_run && !o.simulate.empty()) {
    std::fprintf(stderr, "mics-train: error: --dry-run (the memory plan) and --simulate (step times) are two runs; use one.\n");
    return kExitBadInput;
  }
  if (!o.cluster.empty() && !o.dry_run) {
    std::fprintf(stderr, "mics-train: error: --cluster goes with --dry-run (the memory plan); to predict step times use --simulate FILE.\n");
    return kExitBadInput;
  }
  if (o.simulate.empty() && (!o.nodes.empty() || !o.sim_out.empty() || o.per_gpu_batch > 0 || modes->count() > 0)) {
    std::fprintf(stderr, "mics-train: error: --nodes, --modes, --out and --per-gpu-batch go with --simulate FILE.\n");
    return kExitBadInput;
  }
  if ((o.dry_run || !o.simulate.empty()) &&
      (!o.resume.empty() || !o.init_from.empty() || !o.metrics.empty() || o.steps > 0)) {
    std::fprintf(stderr, "mics-train: error: --resume, --init-from, --metrics and --steps go with a training run; %s "
                 "trains nothing.\n", o.dry_run ? "--dry-run" : "--simulate");
    return kExitBadInput;
  }
  if (!o.simulate.empty() || !o.cluster.empty()) {
    // Planning and simulation run in this one process: no MPI, no devices.
    try {
      const mics::Config config = resolve(o);
      if (!o.simulate.empty()) return simulate(o, config);
      const mics::sim::ClusterSpec cluster = mics::sim::load_cluster(o.cluster);
      std::fputs(mics::planner_report(mics::resolved_for_gpu(config, cluster.compute_capability, cluster.gpu_name),
                                      cluster).c_str(),
                 stdout);
      return 0;
    } catch (const mics::ConfigError& e) {
      std::fprintf(stderr, "mics-train: error: %s\n", e.what());
      return kExitBadInput;
    } catch (const std::exception& e) {  // one line and an exit code, never std::terminate
      std::fprintf(stderr, "mics-train: error: %s\n", e.what());
      return kExitFailure;
    }
  }
  if (!o.init_from.empty() && !o.resume.empty()) {
    std::fprintf(stderr, "mics-train: error: --init-from and --resume exclude each other; use one.\n");
    return kExitBadInput;
  }
  mics::ProcessEnv env(&argc, &argv);
  mics::install_stop_handlers(env.rank() == 0);  // after MPI_Init, so MPI keeps none of these for itself
  try {
    const mics::Config config = resolve(o);
    setup_logging(env, config.log.level);
    if (o.dry_run) {
      if (env.rank() == 0) std::fputs(dry_run(config, env, o.ranks).c_str(), stdout);
      return 0;
    }
    check_placement(config, env);
    const mics::Topology topology = check_runnable(config, env);
    spdlog::info("mics-train {} on {} rank(s), launched by {}", mics::build_info(), env.world(), env.launcher());
    if (!env.launcher_detail().empty()) spdlog::info("{}", env.launcher_detail());
    if (!env.launcher_warning().empty()) spdlog::warn("{}", env.launcher_warning());
    spdlog::info("config {}: {}", config.source_name, config.to_json().dump());
    const int code = train(config, topology, env, o.resume, o.init_from, o.profile);
    mics::finalize_nccl();  // every rank got here: the NCCL communicators end with their peers
    return code;
  } catch (const std::exception& e) {
    const int code = agreed_exit_code(e);
    if (code < 0) fail_rank(env, e);
    std::fprintf(stderr, "mics-train: error: %s\n", e.what());
    return code;
  }
}
