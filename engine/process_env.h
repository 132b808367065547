#pragma once
// The process's place in the job: MPI rank and world, ranks per node, and the launcher's
// variables (Slurm) for logging. MPI is initialised for the lifetime of this object.
#include <string>

namespace mics {

class ProcessEnv {
 public:
  ProcessEnv(int* argc, char*** argv);
  ~ProcessEnv();
  ProcessEnv(const ProcessEnv&) = delete;
  ProcessEnv& operator=(const ProcessEnv&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  int ranks_per_node() const { return ranks_per_node_; }  // from MPI's shared-memory split
  const std::string& launcher() const { return launcher_; }  // "mpirun", "srun" or "direct"
  // The launcher's view, for the log: Slurm job/step and task ids where they describe this
  // rank (under srun); empty otherwise. A mismatch with MPI is reported as a warning.
  const std::string& launcher_detail() const { return detail_; }
  const std::string& launcher_warning() const { return warning_; }
  // How many ranks of this node, this one included, pass the same key (a GPU's PCI bus id:
  // the ranks sharing it). Collective over the node: every rank of it calls this.
  int ranks_on_node_with(const std::string& key) const;
  // Ends every rank of the job; used when one rank fails so that none waits forever.
  [[noreturn]] void abort_job(int code) const;

 private:
  int rank_ = 0, world_ = 1, local_rank_ = 0, ranks_per_node_ = 1;
  std::string launcher_ = "direct";
  std::string detail_, warning_;
};

}  // namespace mics
