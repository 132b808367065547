#pragma once
// NCCL's API as engine/comm/nccl_communicator.cpp uses it, emulated over MPI on host memory
// (tests/emulation/nccl_emulator.cpp), so that the NCCL communicator runs, with several
// ranks, on machines without GPUs. Included in place of NCCL's header (this folder comes
// first on the include path); the functions are renamed, so nothing here can bind to, or
// be bound by, a real libnccl in the same process.
//
// Where NCCL's documentation states a rule that NCCL itself leaves unchecked (the layout of
// in-place collectives, the same call order on every rank), the emulator checks it.
#include <cstddef>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#define ncclGetErrorString mics_emulated_ncclGetErrorString
#define ncclGetLastError mics_emulated_ncclGetLastError
#define ncclGetUniqueId mics_emulated_ncclGetUniqueId
#define ncclCommInitRank mics_emulated_ncclCommInitRank
#define ncclCommSplit mics_emulated_ncclCommSplit
#define ncclCommFinalize mics_emulated_ncclCommFinalize
#define ncclCommDestroy mics_emulated_ncclCommDestroy
#define ncclCommAbort mics_emulated_ncclCommAbort
#define ncclCommGetAsyncError mics_emulated_ncclCommGetAsyncError
#define ncclGroupStart mics_emulated_ncclGroupStart
#define ncclGroupEnd mics_emulated_ncclGroupEnd
#define ncclAllGather mics_emulated_ncclAllGather
#define ncclReduceScatter mics_emulated_ncclReduceScatter
#define ncclAllReduce mics_emulated_ncclAllReduce
#define ncclSend mics_emulated_ncclSend
#define ncclRecv mics_emulated_ncclRecv

typedef struct mics_emulated_nccl_comm* ncclComm_t;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
} ncclResult_t;

typedef enum {
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9,
} ncclDataType_t;

typedef enum { ncclSum = 0 } ncclRedOp_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

#define NCCL_SPLIT_NOCOLOR -1
struct ncclConfig_t;  // only ever passed as null (defaults)

const char* ncclGetErrorString(ncclResult_t result);
const char* ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error);
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();
ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream);

// ---- the emulator's own (not NCCL's) ----
// Every breach of an API rule seen since the last call, one sentence each (the calls
// concerned also returned an error, or failed their communicator); tests expect none.
std::vector<std::string> mics_emulated_take_misuse();
// Stops the thread that starts and completes the queued collectives (the emulated device);
// called once, before MPI_Finalize.
void mics_emulated_shutdown();
