// kernels/cuda/cuda_backend.h in a build without CUDA: no devices, and a backend that
// cannot be made says why.
#include <stdexcept>

#include "kernels/cuda/cuda_backend.h"

namespace mics {

bool cuda_backend_built() { return false; }
int cuda_device_count() { return 0; }
bool cuda_memory_info(int, size_t&, size_t&) { return false; }
int cuda_compute_capability(int) { return 0; }
std::string cuda_device_name(int) { return "none"; }
std::string cuda_device_pci_bus_id(int) { return ""; }
std::unique_ptr<Backend> make_cuda_backend(int, const CudaBackendOptions&) {
  throw std::runtime_error("this build has no CUDA backend (configure where nvcc is installed, MICS_CUDA on)");
}
void* cuda_stream(Backend&) { return nullptr; }
int64_t cuda_gemm_fallback_calls(Backend&) { return 0; }
int64_t cuda_bias_grad_epilogue_calls(Backend&) { return 0; }
int64_t cuda_weight_grad_forks(Backend&) { return 0; }
int64_t cuda_gemm_autotuned_plans(Backend&) { return 0; }
int64_t cuda_gemm_autotune_changes(Backend&) { return 0; }
int64_t cuda_scratch_growths(Backend&) { return 0; }

}  // namespace mics
