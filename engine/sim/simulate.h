#pragma once
// The simulated cluster run: the real trainer (same groups, gathers, prefetch,
// reduce-scatters, two-hop sync, AdamW on the shard) on the simulated backend and
// communicators, one representative rank per configuration (every rank of a MiCS job runs
// the same schedule), two optimizer steps with the second one measured.
#include <string>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/config.h"
#include "engine/sim/cluster_spec.h"
#include "engine/sim/timeline.h"

namespace mics::sim {

struct SweepRequest {
  std::vector<int> nodes;                                  // node counts, ascending
  std::vector<std::string> modes = {"mics", "zero3", "dp"};
  int64_t per_gpu_batch = 0;  // samples per GPU per step; 0: global batch / GPUs of the smallest count
};

struct SimulatedStep {
  std::string mode;
  int nodes = 0, gpus = 0, partition_size = 0;
  bool hierarchical = false;
  int64_t global_batch = 0, accumulation = 0;
  double step_s = 0, samples_per_s = 0, tflops_per_gpu = 0, mfu = 0;
  double scaling_efficiency = 1;  // per-GPU throughput against the mode's smallest node count
  double memory_bytes = 0;        // planned peak per GPU
  bool fits = true;
  Timeline time;    // the measured step's busy and exposed times
  CommStats bytes;  // the measured step's bytes on this rank (same accounting as MPI)
};

// One configuration: `config` run as is (its partition size, hierarchy and global batch)
// on `nodes` nodes of the cluster, seen from world rank `rank`.
SimulatedStep simulate_step(const Config& config, const ClusterSpec& cluster, int nodes, const std::string& mode,
                            int rank = 0);

std::vector<SimulatedStep> simulate_sweep(const Config& config, const ClusterSpec& cluster,
                                          const SweepRequest& request);

std::string format_table(const Config& config, const ClusterSpec& cluster, const std::vector<SimulatedStep>& rows);
// Throws ConfigError unless `path` ends in .csv or .json and can be written.
void check_results_path(const std::string& path);
// .csv or .json by the file's extension.
void write_results(const std::string& path, const Config& config, const ClusterSpec& cluster,
                   const std::vector<SimulatedStep>& rows);

}  // namespace mics::sim
