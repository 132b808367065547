#pragma once
// A device backend for the tests that run the GPU path's multi-rank code without a GPU: the
// CPU backend's ops, each queued as a kernel on an emulated CUDA stream
// (tests/emulation/nccl/cuda_runtime.h) and run later, in stream order, by the emulator's
// device thread, as the CUDA backend's kernels are on its stream. Its queue semantics follow
// kernels/cuda/cuda_backend.cpp: copies to and from the host and the reductions that return
// a value synchronise the main stream; release synchronises the device (cudaFree does);
// the side queue is a second stream that starts behind the main one, with a ring of fence
// events. Given to NCCL's communicator as its compute stream (emulated_device_stream), it
// lets the emulator show what a missing event wait would let through, given the side that
// waits the longer latency: a collective that reads a buffer before the kernels writing it
// ran, a kernel that reads what a collective has not written yet, a forward that reads a
// layer before its deferred update. (An update reading gradients not yet computed cannot
// show: the trainer reads the gradients' norm on the host, which drains the main stream,
// before it queues the updates.)
//
// Only with the NCCL emulator (built with tests/emulation/nccl first on the include path).
#include <memory>

#include "kernels/ops.h"

namespace mics {

// How long after its issue each kernel may start, on the main stream and on the side queue's
// (the emulator's collectives have their own: mics_emulated_set_collective_latency).
struct EmulatedDeviceLatency {
  int main_us = 1000;
  int side_us = 1000;
};

std::unique_ptr<Backend> make_emulated_device_backend(EmulatedDeviceLatency latency = {});
// The backend's main stream (a cudaStream_t of the emulator), for build_device_groups.
void* emulated_device_stream(Backend& backend);

}  // namespace mics
