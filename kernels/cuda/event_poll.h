#pragma once
// Polling an event, for the CUDA backend and the NCCL communicator alike. cudaErrorNotReady
// is no failure, but the runtime keeps it as the thread's last error, which the next launch
// check (cudaGetLastError) would throw: it is cleared here.
#include <cuda_runtime.h>  // (the emulator's under tests/emulation/nccl)

namespace mics::cuda {

// cudaSuccess once the work before the event's record has run, cudaErrorNotReady while it
// has not, or the error the query met.
inline cudaError_t poll_event(cudaEvent_t event) {
  const cudaError_t state = cudaEventQuery(event);
  if (state == cudaErrorNotReady) (void)cudaGetLastError();
  return state;
}

}  // namespace mics::cuda
