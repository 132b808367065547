#pragma once
// Error checks for the CUDA runtime and cuBLAS/cuBLASLt. Every call into either library,
// and every kernel launch (through MICS_CUDA_CHECK_LAUNCH), goes through one of these:
// a failure throws mics::cuda::CudaError carrying the library's message, the failing
// expression and file:line. Internal to kernels/cuda: it includes the CUDA headers, which
// the public header cuda_backend.h does not.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace mics::cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw CudaError(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ") in " + expr + " at " + file + ":" +
                  std::to_string(line));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  throw CudaError(std::string("cuBLAS error ") + cublasLtGetStatusName(status) + " (" +
                  cublasLtGetStatusString(status) + ") in " + expr + " at " + file + ":" +
                  std::to_string(line));
}

}  // namespace mics::cuda

#define MICS_CUDA_CHECK(expr)                                                           \
  do {                                                                                  \
    const cudaError_t mics_cuda_err_ = (expr);                                          \
    if (mics_cuda_err_ != cudaSuccess)                                                  \
      ::mics::cuda::throw_cuda_error(mics_cuda_err_, #expr, __FILE__, __LINE__);        \
  } while (0)

// cuBLAS and cuBLASLt share cublasStatus_t.
#define MICS_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                  \
    const cublasStatus_t mics_cublas_status_ = (expr);                                  \
    if (mics_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                   \
      ::mics::cuda::throw_cublas_error(mics_cublas_status_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch: a bad configuration (grid, shared memory) shows up here.
// Errors raised while the kernel runs surface at the next synchronising call.
#define MICS_CUDA_CHECK_LAUNCH() MICS_CUDA_CHECK(cudaGetLastError())
