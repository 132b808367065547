#include "engine/process_env.h"

#include <mpi.h>

#include <cstdlib>

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
  if (std::getenv("SLURM_STEP_ID") != nullptr && std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr)
    launcher_ = "srun";
  else if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr)
    launcher_ = "mpirun";
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
