#include "engine/topology.h"

#include "engine/config.h"

namespace mics {

int Topology::nodes_per_partition() const {
  return partition_spans_nodes() ? partition_size / ranks_per_node : 1;
}

std::vector<int> Topology::partition_members() const {
  std::vector<int> m;
  for (int i = 0; i < partition_size; ++i) m.push_back(partition_group() * partition_size + i);
  return m;
}

std::vector<int> Topology::replication_members() const {
  std::vector<int> m;
  for (int i = shard_index(); i < world; i += partition_size) m.push_back(i);
  return m;
}

std::vector<int> Topology::intra_node_members() const {
  std::vector<int> m;
  for (int r : partition_members())
    if (node_of(r) == node()) m.push_back(r);
  return m;
}

std::vector<int> Topology::inter_node_members() const {
  std::vector<int> m;
  for (int r : partition_members())
    if (r % ranks_per_node == local_rank()) m.push_back(r);
  return m;
}

std::string Topology::mode() const {
  if (partition_size == 1) return "data-parallel";
  if (partition_size == world) return "ZeRO-3";
  return "MiCS";
}

std::string Topology::describe() const {
  return "mode " + mode() + ": N=" + std::to_string(world) + ", k=" + std::to_string(ranks_per_node) +
         ", p=" + std::to_string(partition_size) + ", r=" + std::to_string(replicas()) +
         ", hierarchical gather " + (hierarchical ? "on" : "off");
}

Topology make_topology(int rank, int world, int k, int p, const std::string& hierarchical) {
  if (k <= 0 || world % k != 0)
    throw ConfigError("'runtime.ranks_per_node' (" + std::to_string(k) +
                      ") must divide the number of ranks (" + std::to_string(world) + ").");
  if (p <= 0 || world % p != 0)
    throw ConfigError("'mics.partition_size' (" + std::to_string(p) +
                      ") must divide the number of ranks (" + std::to_string(world) + ").");
  Topology t{rank, world, k, p, false};
  const bool spans = p > k;
  // A group that spans nodes must own whole nodes, or an "intra-node" group would
  // silently cross nodes.
  if (spans && p % k != 0)
    throw ConfigError("'mics.partition_size' (" + std::to_string(p) +
                      ") spans nodes, so it must be a multiple of the ranks per node (" +
                      std::to_string(k) + ").");
  if (!spans && k % p != 0)
    throw ConfigError("'mics.partition_size' (" + std::to_string(p) + ") stays inside a node, so it must divide the "
                      "ranks per node (" + std::to_string(k) + "); otherwise a group would straddle two nodes.");
  if (hierarchical == "true" && !spans)
    throw ConfigError("'mics.hierarchical_allgather' is true but a partition group of " +
                      std::to_string(p) + " ranks stays inside one node of " + std::to_string(k) +
                      " ranks; use \"auto\" or false.");
  t.hierarchical = hierarchical == "true" || (hierarchical == "auto" && spans);
  return t;
}

}  // namespace mics
