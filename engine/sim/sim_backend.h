#pragma once
// The backend of the simulated cluster: allocations are address ranges with no memory
// behind them, and every op advances the compute stream by its cost on one GPU of the
// cluster: GEMMs by FLOPs over the peak times our measured GEMM efficiency (or by their
// bytes, when that is slower), everything else by bytes over the memory bandwidth times our
// measured copy efficiency. Nothing is computed: sums return 0.
#include <memory>

#include "engine/sim/cluster_spec.h"
#include "engine/sim/timeline.h"
#include "kernels/ops.h"

namespace mics::sim {

// `half`: price the model as a bf16/fp16 run (2-byte activations and GEMMs at the
// half-precision peak); otherwise fp32.
std::unique_ptr<Backend> make_sim_backend(const ClusterSpec& cluster, Timeline& timeline, bool half);

}  // namespace mics::sim
