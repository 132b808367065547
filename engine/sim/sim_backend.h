#pragma once
// The backend of the simulated cluster: allocations are address ranges with no memory
// behind them, and every op advances the compute stream by its cost on one GPU of the
// cluster: GEMMs by FLOPs over the peak times our measured GEMM efficiency (or by their
// bytes, when that is slower), everything else by bytes over the memory bandwidth times our
// measured copy efficiency, each tensor at its dtype's size. Nothing is computed: sums
// return 0.
#include <memory>

#include "engine/sim/cluster_spec.h"
#include "engine/sim/timeline.h"
#include "kernels/ops.h"

namespace mics::sim {

// bf16/fp16 GEMMs run at the half-precision peak, fp32 GEMMs at the fp32 peak.
std::unique_ptr<Backend> make_sim_backend(const ClusterSpec& cluster, Timeline& timeline);

}  // namespace mics::sim
