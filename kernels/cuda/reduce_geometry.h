#pragma once
// The whole-tensor reductions' launch geometry (reduce.cu), apart so that the emulated
// tests (tests/emulation/test_reduce_emulated.cpp) run the kernels on the same grids.
#include <cstdint>

namespace mics::cuda {

// A sum returned to the host: one block per 256 elements, at most kReducePartials blocks
// (threads stride beyond), whose partials one block of kReducePartials threads folds.
inline constexpr int kReducePartials = 1024;

// A sum left on the device (queue_device_sum): one block per kQueuedSumBlockElements
// elements, at most kQueuedPartials blocks, folded by one block of kReducePartials threads,
// thread t adding partials t, t + kReducePartials, ... in order. The blocks are
// short-lived so that, on a low-priority stream beside GEMMs, each holds an SM for
// microseconds, not for the whole pass (a GEMM's next kernel cannot start on an SM the sum
// holds).
inline constexpr int kQueuedPartials = 16384;
inline constexpr int64_t kQueuedSumBlockElements = 8192;

}  // namespace mics::cuda
