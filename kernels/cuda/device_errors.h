#pragma once
// Bits of the CUDA backend's device error word: kernels that meet a bad index set one (an
// atomicOr) and skip the entry; the backend reads the word at its next synchronising call
// and throws. No CUDA header, so that kernels compiled for the host under
// tests/emulation/cuda_emulator.h use the same bits.

namespace mics::cuda {

enum DeviceErrorBit : int {
  kBadTokenId = 1,
  kBadTypeId = 2,
  kBadLabel = 4,
  kBadGatherRow = 8,
  kBadScatterRow = 16,
};

}  // namespace mics::cuda
