#pragma once
// The process groups a multi-rank test runs on: MPI's communicators, or, built with
// MICS_OVER_EMULATED_NCCL, NCCL's communicator (engine/comm/nccl_communicator.cpp) with NCCL
// and the CUDA runtime emulated over MPI on host memory (tests/emulation/nccl_emulator.cpp):
// the same product code that builds a GPU run's groups, on the CPU backend's host tensors.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <string>

#include "engine/comm/nccl_communicator.h"
#include "engine/process_groups.h"
#include "engine/topology.h"
#include "kernels/ops.h"

#ifdef MICS_OVER_EMULATED_NCCL
#include <nccl.h>  // the emulator's (tests/emulation/nccl): its misuse record
#endif

namespace mics {

#ifdef MICS_OVER_EMULATED_NCCL

// The emulator's NCCL set-up calls use MPI from the set-up thread.
inline void init_mpi_under_test(int* argc, char*** argv) {
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  if (provided != MPI_THREAD_MULTIPLE) {
    std::fprintf(stderr, "the NCCL emulator needs MPI_THREAD_MULTIPLE; this MPI provides level %d\n", provided);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // A rank that fails (an emulator check) leaves its peers waiting: they give up in 30 s.
  set_comm_timeout(30);
}
// As a GPU run builds them (engine/process_groups.cpp), on the default stream.
inline std::unique_ptr<ProcessGroups> groups_under_test(const Topology& t) {
  static const std::unique_ptr<Backend> unused = make_cpu_backend();  // the NCCL groups stage nothing
  return build_device_groups(t, *unused, "nccl", nullptr);
}
// Every NCCL or CUDA API rule the emulator checks held since the last call.
inline void expect_no_misuse() {
  for (const std::string& m : mics_emulated_take_misuse()) ADD_FAILURE() << "NCCL emulator: " << m;
}
// The normal end of a run, NCCL's communicators finalized with their peers; after the
// tests, before MPI_Finalize. Returns how many rules were broken (each printed).
inline int end_groups_under_test() {
  finalize_nccl();
  mics_emulated_shutdown();
  const auto misuse = mics_emulated_take_misuse();
  for (const std::string& m : misuse) std::fprintf(stderr, "NCCL emulator: %s\n", m.c_str());
  return static_cast<int>(misuse.size());
}
#else

inline void init_mpi_under_test(int* argc, char*** argv) { MPI_Init(argc, argv); }
inline std::unique_ptr<ProcessGroups> groups_under_test(const Topology& t) { return build_mpi_groups(t); }
inline void expect_no_misuse() {}
inline int end_groups_under_test() { return 0; }
#endif

}  // namespace mics
