#include "engine/process_env.h"

#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace mics {

ProcessEnv::ProcessEnv(int* argc, char*** argv) {
  int provided = 0;
  // Only the main thread calls MPI; OpenMP and OpenBLAS threads compute.
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &ranks_per_node_);
  MPI_Comm_free(&node);
  // Rank and node come from MPI, which is right under every launcher. Slurm's task
  // variables describe this rank only under srun (under mpirun they are the launch step's).
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (!env("OMPI_COMM_WORLD_SIZE").empty()) {
    launcher_ = "mpirun";
  } else if (!env("SLURM_STEP_ID").empty()) {
    launcher_ = "srun";
    detail_ = "Slurm job " + env("SLURM_JOB_ID") + " step " + env("SLURM_STEP_ID") + ", " +
              env("SLURM_JOB_NUM_NODES") + " nodes; rank 0 is SLURM_PROCID " + env("SLURM_PROCID") +
              " on node " + env("SLURM_NODEID");
    if (env("SLURM_NTASKS") != std::to_string(world_) || env("SLURM_PROCID") != std::to_string(rank_))
      warning_ = "Slurm says task " + env("SLURM_PROCID") + " of " + env("SLURM_NTASKS") + ", MPI says rank " +
                 std::to_string(rank_) + " of " + std::to_string(world_) + "; using MPI's";
  }
}

int ProcessEnv::ranks_on_node_with(const std::string& key) const {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  constexpr int kKeyBytes = 64;
  char mine[kKeyBytes] = {};
  std::strncpy(mine, key.c_str(), kKeyBytes - 1);
  std::vector<char> all(static_cast<size_t>(ranks_per_node_) * kKeyBytes);
  MPI_Allgather(mine, kKeyBytes, MPI_CHAR, all.data(), kKeyBytes, MPI_CHAR, node);
  MPI_Comm_free(&node);
  int same = 0;
  for (int r = 0; r < ranks_per_node_; ++r)
    if (std::strncmp(all.data() + static_cast<size_t>(r) * kKeyBytes, mine, kKeyBytes) == 0) ++same;
  return same;
}

ProcessEnv::~ProcessEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void ProcessEnv::abort_job(int code) const {
  if (world_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  MPI_Finalize();
  std::exit(code);
}

}  // namespace mics
