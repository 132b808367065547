// The NCCL communicator's entry points in a build without CUDA or NCCL: each says so.
#include <stdexcept>

#include "engine/comm/nccl_communicator.h"

namespace mics {

namespace {
[[noreturn]] void unavailable() {
  throw std::runtime_error("this build has no NCCL communicator (configure with CUDA and NCCL present)");
}
}  // namespace

bool nccl_available() { return false; }
void init_nccl_world(void*) { unavailable(); }
std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>&, GroupKind, int, CommStats&) {
  unavailable();
}
void abort_nccl() {}
void finalize_nccl() {}

}  // namespace mics
