#pragma once
// The CUDA runtime calls of engine/comm/nccl_communicator.cpp, emulated on the host for the
// NCCL emulator (see nccl.h beside this file): streams and events are handles checked for
// use after destruction; a collective runs when issued, so an event is complete once
// recorded, except that the first query after each record answers "not ready", as a busy
// device would, so the callers' polling paths run too.
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
