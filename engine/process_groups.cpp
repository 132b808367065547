#include "engine/process_groups.h"

#include <stdexcept>
#include <vector>

#include "engine/comm/nccl_communicator.h"
#include "engine/comm/staged_communicator.h"

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

std::unique_ptr<ProcessGroups> build_device_groups(const Topology& t, Backend& device, const std::string& kind,
                                                   void* device_stream) {
  if (kind == "staged") {
    auto g = build_mpi_groups(t);
    for (auto* c : {&g->partition, &g->replication, &g->intra_node, &g->inter_node})
      if (*c) *c = make_staged_communicator(std::move(*c), device);
    return g;
  }
  if (kind != "nccl") throw std::logic_error("unknown device communicator " + kind);
  auto g = std::make_unique<ProcessGroups>();
  const int k = t.ranks_per_node;
  std::vector<int> everyone(static_cast<size_t>(t.world));
  for (int r = 0; r < t.world; ++r) everyone[static_cast<size_t>(r)] = r;
  // The MPI world first: its waits answer liveness pings, which NCCL's set-up waits need.
  g->world = make_mpi_communicator(everyone, GroupKind::replication, k, g->stats);
  init_nccl_world(device_stream);
  g->partition = make_nccl_communicator(t.partition_members(), GroupKind::partition, k, g->stats);
  g->replication = make_nccl_communicator(t.replication_members(), GroupKind::replication, k, g->stats);
  if (t.hierarchical) {
    g->intra_node = make_nccl_communicator(t.intra_node_members(), GroupKind::partition, k, g->stats);
    g->inter_node = make_nccl_communicator(t.inter_node_members(), GroupKind::partition, k, g->stats);
  }
  return g;
}

}  // namespace mics
