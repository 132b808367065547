#pragma once
// The communicators of one rank, built once from its Topology: partition group,
// replication group and, for a hierarchical gather, the intra- and inter-node subgroups of
// the partition group; plus the whole world for scalar sums. Building them over MPI is
// collective: every rank calls it in the same order. The simulator builds its own
// (engine/sim).
#include <memory>

#include "engine/comm/communicator.h"
#include "engine/sharded_param_store.h"
#include "engine/topology.h"

namespace mics {

struct ProcessGroups {
  CommStats stats;
  std::unique_ptr<Communicator> partition, replication, intra_node, inter_node;
  std::unique_ptr<Communicator> world;  // every rank; scalar sums only (losses)

  ShardedParamStore::Groups groups() const {
    return {partition.get(), replication.get(), intra_node.get(), inter_node.get()};
  }
};

std::unique_ptr<ProcessGroups> build_mpi_groups(const Topology& topo);

// The groups of a rank computing on a device backend: "nccl" (one rank per GPU; the NCCL
// world is created here from `device_stream`, the backend's stream) or "staged" (MPI
// through host memory, for several ranks on one GPU). Scalar sums stay on MPI.
std::unique_ptr<ProcessGroups> build_device_groups(const Topology& topo, Backend& device, const std::string& kind,
                                                   void* device_stream);

}  // namespace mics
