#pragma once
// Collectives over NCCL for one rank per GPU (compiled when the build has CUDA and NCCL).
// The world communicator is bootstrapped through MPI (rank 0's unique id broadcast); each
// group is split from it with ncclCommSplit. Collectives run on the group's own stream,
// after the backend's stream reaches the point of the call (an event), so the next layer's
// gather and the last layer's reduce-scatter overlap compute; wait() blocks the host until
// the collective has completed, polling with the runtime.comm_timeout_s deadline, and a
// timeout or an NCCL error aborts every NCCL communicator of this rank before it throws.
#include <memory>
#include <vector>

#include "engine/comm/communicator.h"

namespace mics {

// True when this build has the NCCL communicator.
bool nccl_available();

// Collective over the world: creates the NCCL world communicator once (every rank calls it
// first, with the backend's stream), before any make_nccl_communicator.
void init_nccl_world(void* compute_stream);
// Collective over the world, like make_mpi_communicator.
std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& members, GroupKind kind,
                                                     int ranks_per_node, CommStats& stats);
// Aborts every NCCL communicator of this rank (on a fatal error, so no peer waits forever).
void abort_nccl();

}  // namespace mics
