#pragma once
// A cluster the simulator charges time against: one node type, its GPUs, NVLink inside a
// node and the network between nodes. Every number in a cluster file is a hardware spec or
// our own measurement and carries its source ({"value": 125, "source": "..."}); nothing is
// fitted to a published throughput figure.
#include <string>

namespace mics::sim {

struct ClusterSpec {
  std::string name;          // "p3dn.24xlarge"
  std::string gpu_name;      // "V100 SXM2 32GB"
  int compute_capability = 0;  // major * 10 + minor (70: V100); 0 when the file has none
  int gpus_per_node = 8;
  double memory_gib = 0;             // per GPU
  double peak_tflops_half = 0;       // dense fp16/bf16 tensor-core peak per GPU
  double peak_tflops_fp32 = 0;       // dense fp32 peak per GPU (fp32 runs)
  double gemm_efficiency = 0;        // achieved / peak for large GEMMs (our measurement)
  double memory_gbs = 0;             // HBM bandwidth per GPU, GB/s (1e9 bytes)
  double memory_efficiency = 0;      // achieved / spec for streaming kernels (our measurement)
  double intra_gbs = 0;              // NVLink bandwidth per GPU and direction, GB/s
  double intra_latency_us = 0;       // per ring step inside a node
  double inter_gbits = 0;            // network bandwidth per node and direction, Gbit/s
  double inter_latency_us = 0;       // per ring step between nodes
  // Bus bandwidth a collective reaches as a fraction of the link's (measured, e.g. by
  // mics-bench-comm); [CollectiveOp]. 1 when the file has no measurement.
  double collective_efficiency[3] = {1, 1, 1};

  double gemm_flops_per_s(bool half) const;
  double memory_bytes_per_s() const { return memory_gbs * 1e9 * memory_efficiency; }
  double intra_bytes_per_s() const { return intra_gbs * 1e9; }
  double inter_bytes_per_s() const { return inter_gbits * 1e9 / 8.0; }
};

// Reads and validates a cluster file; a missing key, a key without its source, an unknown
// key or a non-positive value is a ConfigError naming the file and the key.
ClusterSpec load_cluster(const std::string& path);

}  // namespace mics::sim
