#pragma once
// Where a rank sits: its node, its partition group (p consecutive ranks that shard one copy
// of the model states) and its replication group (the ranks holding the same shard in the
// other copies). Pure arithmetic, built once and passed explicitly.
#include <cstdint>
#include <string>
#include <vector>

namespace mics {

struct Topology {
  int rank = 0;
  int world = 1;           // N
  int ranks_per_node = 1;  // k
  int partition_size = 1;  // p, divides N
  bool hierarchical = false;  // two-stage gather: the partition group spans nodes

  int node() const { return rank / ranks_per_node; }
  int local_rank() const { return rank % ranks_per_node; }
  int replicas() const { return world / partition_size; }  // r
  int partition_group() const { return rank / partition_size; }
  int shard_index() const { return rank % partition_size; }  // also the replication group id
  int nodes_per_partition() const;  // p / k when a group spans nodes, else 1
  bool partition_spans_nodes() const { return partition_size > ranks_per_node; }
  int node_of(int r) const { return r / ranks_per_node; }

  // Ranks of each group this rank belongs to, in group order.
  std::vector<int> partition_members() const;    // g*p .. g*p + p-1
  std::vector<int> replication_members() const;  // i, i+p, i+2p, ...
  // Hierarchical gather: partition members on this node (intra) and the members with this
  // rank's local rank on the other nodes (inter, one "rail").
  std::vector<int> intra_node_members() const;
  std::vector<int> inter_node_members() const;

  std::string mode() const;  // "data-parallel", "ZeRO-3" or "MiCS"
  std::string describe() const;  // "mode MiCS: N=8, k=2, p=4, r=2, hierarchical gather on"
};

// Validates and builds. `partition_size` is the resolved p (auto already applied);
// `hierarchical` is "auto", "true" or "false". Throws ConfigError naming the key.
Topology make_topology(int rank, int world, int ranks_per_node, int partition_size,
                       const std::string& hierarchical);

}  // namespace mics
