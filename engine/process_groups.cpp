#include "engine/process_groups.h"

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
  return g;
}

}  // namespace mics
