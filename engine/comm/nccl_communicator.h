#pragma once
// Collectives over NCCL for one rank per GPU (compiled when the build has CUDA and NCCL).
// The world communicator is bootstrapped through MPI (rank 0's unique id broadcast); each
// group is split from it with ncclCommSplit. Collectives run on the group's own stream,
// after the backend's stream reaches the point of the call (an event), so the next layer's
// gather and the last layer's reduce-scatter overlap compute; wait() blocks the host until
// the collective has completed, polling as MPI's waits do (wait_until: the
// runtime.comm_timeout_s deadline, liveness pings, a timeout naming the silent ranks), and a
// timeout or an NCCL error aborts every NCCL communicator of this rank before it throws.
// NCCL's set-up calls (ncclCommInitRank, ncclCommSplit), which wait for every peer with no
// deadline of their own, run on a thread apart under the same bounded wait.
// Host scalars go over MPI between the same members, with the same deadline. Completion
// events are pooled: the pool grows to the most requests a step keeps in flight.
#include <memory>
#include <vector>

#include "engine/comm/communicator.h"

namespace mics {

// True when this build has the NCCL communicator.
bool nccl_available();

// Collective over the world: creates the NCCL world communicator once (every rank calls it
// first, with the backend's stream), before any make_nccl_communicator and after the first
// MPI communicator (whose liveness pings its bounded wait uses).
void init_nccl_world(void* compute_stream);
// Collective over the world, like make_mpi_communicator.
std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& members, GroupKind kind,
                                                     int ranks_per_node, CommStats& stats);
// Aborts every NCCL communicator of this rank (on a fatal error, so no peer waits forever),
// giving ncclCommAbort 10 s (it may wait for the peers to abort too); from then on the
// communicators start nothing and wait for nothing, so the teardown cannot hang or use an
// aborted handle. The caller then ends the job (MPI_Abort).
void abort_nccl();
// The normal end of a run, on every rank: finalizes and destroys every NCCL communicator of
// this rank (flushing what was issued, with the peers), given 30 s; afterwards, as after
// abort_nccl, the communicators start and wait for nothing.
void finalize_nccl();

}  // namespace mics
