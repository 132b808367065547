#pragma once
// What this binary is: the commit it was built from and what the build has (CUDA and its
// target architectures, NCCL, cuDNN), for --version and the first line of every run's log.
#include <string>

namespace mics {

// e.g. "7d26f7b1c0de (CUDA for compute capabilities 80 90 with cuDNN; NCCL communicator)".
std::string build_info();

}  // namespace mics
