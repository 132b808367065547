#pragma once
// Collectives over device buffers through host memory: for several ranks on one GPU,
// which NCCL refuses ("Duplicate GPU detected"). Each collective copies its device data to
// the host, runs the MPI communicator there, and copies the result back; sums run in fp32
// on the host (half-precision buffers are cast to fp32 on the device first). Collectives
// complete before the call returns (no overlap), so every rank issues them in program
// order, which the parameter store keeps identical on all ranks. Bytes are charged by the
// MPI communicator: fp32 for sums of half-precision data.
#include <memory>

#include "engine/comm/communicator.h"
#include "kernels/ops.h"

namespace mics {

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host, Backend& device);

}  // namespace mics
