#include "engine/build_info.h"

#include "engine/comm/nccl_communicator.h"
#include "mics_build_version.h"  // generated at build time (cmake/build_version.cmake)

namespace mics {

std::string build_info() {
  std::string out = MICS_BUILD_COMMIT;
#ifdef MICS_HAVE_CUDA
  out += " (CUDA for compute capabilities " MICS_CUDA_ARCHS " with cuDNN; ";
#else
  out += " (no CUDA backend: CPU only; ";
#endif
  out += nccl_available() ? "NCCL communicator)" : "no NCCL communicator)";
  return out;
}

}  // namespace mics
