#pragma once
// The CUDA runtime calls of engine/comm/nccl_communicator.cpp (and of the emulated device
// backend, tests/emulation/emulated_device_backend.h), emulated on the host for the NCCL
// emulator (see nccl.h beside this file): streams and events are handles checked for use
// after destruction; the work queued on a stream runs later, in stream order, on the
// emulator's device thread, and an event completes when the work before its record has.
#include <functional>

#define cudaGetErrorString mics_emulated_cudaGetErrorString
#define cudaGetDevice mics_emulated_cudaGetDevice
#define cudaSetDevice mics_emulated_cudaSetDevice
#define cudaDeviceGetStreamPriorityRange mics_emulated_cudaDeviceGetStreamPriorityRange
#define cudaStreamCreateWithPriority mics_emulated_cudaStreamCreateWithPriority
#define cudaStreamDestroy mics_emulated_cudaStreamDestroy
#define cudaStreamWaitEvent mics_emulated_cudaStreamWaitEvent
#define cudaEventCreateWithFlags mics_emulated_cudaEventCreateWithFlags
#define cudaEventDestroy mics_emulated_cudaEventDestroy
#define cudaEventRecord mics_emulated_cudaEventRecord
#define cudaEventQuery mics_emulated_cudaEventQuery
#define cudaGetLastError mics_emulated_cudaGetLastError
#define cudaStreamSynchronize mics_emulated_cudaStreamSynchronize
#define cudaDeviceSynchronize mics_emulated_cudaDeviceSynchronize

typedef enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
} cudaError_t;

typedef struct mics_emulated_cuda_stream* cudaStream_t;
typedef struct mics_emulated_cuda_event* cudaEvent_t;

#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02

const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned int flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
// As CUDA's runtime: the last error a call of this thread returned, cudaErrorNotReady from
// cudaEventQuery included, kept until read here. A caller that polls an event and does not
// clear it has the next launch check (MICS_CUDA_CHECK_LAUNCH) fail.
cudaError_t cudaGetLastError();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

// ---- the emulator's own (not CUDA's) ----
// Queues `work` on `stream` as a kernel, to start no earlier than `latency_us` after now:
// the device thread runs it in stream order, after the events the stream waits for (under
// the emulator's lock: it must not call the emulator).
void mics_emulated_launch_work(cudaStream_t stream, std::function<void()> work, int latency_us);
// How long after its issue the device may start each collective (default 1 ms). A slow side
// shows what a missing event wait lets through: slow kernels, a collective that reads a
// buffer before the kernels writing it have run; slow collectives, a kernel that reads what
// a collective has not yet written.
void mics_emulated_set_collective_latency(int microseconds);
