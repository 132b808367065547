#include "engine/process_groups.h"

#include <vector>

namespace mics {

std::unique_ptr<ProcessGroups> build_mpi_groups(const Topology& t) {
  auto g = std::make_unique<ProcessGroups>();
  const int k = t.ranks_per_node;
  g->partition = make_mpi_communicator(t.partition_members(), GroupKind::partition, k, g->stats);
  g->replication = make_mpi_communicator(t.replication_members(), GroupKind::replication, k, g->stats);
  if (t.hierarchical) {
    g->intra_node = make_mpi_communicator(t.intra_node_members(), GroupKind::partition, k, g->stats);
    g->inter_node = make_mpi_communicator(t.inter_node_members(), GroupKind::partition, k, g->stats);
  }
  std::vector<int> everyone(static_cast<size_t>(t.world));
  for (int r = 0; r < t.world; ++r) everyone[static_cast<size_t>(r)] = r;
  g->world = make_mpi_communicator(everyone, GroupKind::replication, k, g->stats);
  return g;
}

}  // namespace mics
