// The CUDA backend starts here: device discovery. The kernels behind kernels/ops.h come
// with the CUDA issue; until then the build proves that nvcc, the toolkit and the
// project's CMake agree.
#include <cuda_runtime.h>

#include <string>

namespace mics::cuda {

// Number of visible CUDA devices; 0 when there is no driver or no device.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unknown";
  return prop.name;
}

}  // namespace mics::cuda
