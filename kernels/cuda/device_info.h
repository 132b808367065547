#pragma once
// CUDA device discovery (compiled only when MICS_CUDA is on).
#include <string>

namespace mics::cuda {

int device_count();
std::string device_name(int device);

}  // namespace mics::cuda
