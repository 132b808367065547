// What one rank reads alone (its data, its Hugging Face weights) is agreed on by all:
// a rank that cannot read stops every rank with it, and a rank whose data differ from rank
// 0's is refused, instead of the others waiting for it in the next collective or training
// on a mix. Run on 2 ranks; rank 1 plays the node with the missing or different file.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/data_source.h"
#include "engine/comm/rank_agreement.h"
#include "engine/config.h"
#include "engine/hf_interchange.h"
#include "engine/process_groups.h"
#include "engine/safetensors.h"
#include "engine/topology.h"
#include "engine/trainer.h"
#include "kernels/ops.h"

namespace mics {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// One folder for both ranks (made by rank 0), removed at the end.
class SharedDir {
 public:
  SharedDir() {
    int stamp = world_rank() == 0 ? static_cast<int>(::getpid()) : 0;
    MPI_Bcast(&stamp, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path_ = std::filesystem::temp_directory_path() / ("mics-agreement-" + std::to_string(stamp));
    if (world_rank() == 0) std::filesystem::create_directories(path_);
    MPI_Barrier(MPI_COMM_WORLD);
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) std::filesystem::remove_all(path_);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::string text(char flavour) {
  std::string t;
  for (int i = 0; i < 400; ++i) t += std::string("a line of text number ") + flavour + std::to_string(i) + ".\n";
  return t;
}

Config tiny_config(const std::string& data_path) {
  return load_config(std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json",
                     {"train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=4", "model.hidden=32",
                      "model.layers=1", "data.source=\"text\"", "data.path=\"" + data_path + "\""});
}

// The message the Trainer's construction throws on this rank ("" when none), as `Error`.
template <class Error>
std::string construction_error(const std::string& data_path) {
  const Config c = tiny_config(data_path);
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  try {
    Trainer trainer(c, *cpu, make_topology(world_rank(), 2, 2, 1, "false"));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RankAgreement, AFailureOnOneRankIsEveryRanks) {
  const std::unique_ptr<ProcessGroups> groups = build_mpi_groups(make_topology(world_rank(), 2, 2, 1, "false"));
  std::string message;
  try {
    agree_on_failure<std::runtime_error>(*groups->world, "another rank failed", [] {
      if (world_rank() == 1) throw std::invalid_argument("rank 1's own failure");
    });
  } catch (const std::invalid_argument& e) {
    message = e.what();
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_EQ(message, world_rank() == 1 ? "rank 1's own failure" : "another rank failed");
  EXPECT_NO_THROW(agree_on_failure<std::runtime_error>(*groups->world, "", [] {}));
  const Difference d = difference_from_rank0(*groups->world, world_rank() == 1 ? 0xFEDCBA9876543210ull : 42);
  EXPECT_EQ(d.here, world_rank() == 1);
  EXPECT_EQ(d.ranks, 1);
  EXPECT_EQ(groups->world->first_member_value(world_rank() == 0 ? 0xFFFFFFFFFFFFFFFFull : 7), 0xFFFFFFFFFFFFFFFFull);
}

TEST(RankAgreement, DataOneRankCannotReadStopsBoth) {
  SharedDir dir;
  if (world_rank() == 0) std::ofstream(dir.file("a.txt")) << text('a');
  const std::string path = world_rank() == 0 ? dir.file("a.txt") : dir.file("missing.txt");
  const std::string message = construction_error<data::DataError>(path);
  if (world_rank() == 1) EXPECT_NE(message.find(dir.file("missing.txt") + "' does not exist"), std::string::npos) << message;
  else EXPECT_EQ(message, "another rank cannot read the data; see its message.");
}

TEST(RankAgreement, DataThatDifferOnOneRankAreRefused) {
  SharedDir dir;
  std::filesystem::create_directories(dir.file(world_rank() == 0 ? "a" : "b"));
  std::ofstream(dir.file(world_rank() == 0 ? "a/t.txt" : "b/t.txt")) << text(world_rank() == 0 ? 'a' : 'b');
  // The same size, another byte: as a node with another version of the file.
  const std::string message = construction_error<data::DataError>(dir.file(world_rank() == 0 ? "a/t.txt" : "b/t.txt"));
  if (world_rank() == 1) EXPECT_NE(message.find("the data this rank reads differ from rank 0's"), std::string::npos) << message;
  else EXPECT_EQ(message, "1 rank(s) read data that differ from rank 0's; see their messages.");
}

TEST(RankAgreement, WeightsOneRankCannotReadStopBoth) {
  SharedDir dir;
  if (world_rank() == 0) std::ofstream(dir.file("t.txt")) << text('a');
  MPI_Barrier(MPI_COMM_WORLD);
  const Config c = tiny_config(dir.file("t.txt"));
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  Trainer trainer(c, *cpu, make_topology(world_rank(), 2, 2, 1, "false"));
  // Rank 0 reads good weights (zeros: their values do not matter here); rank 1's are missing.
  const std::string weights = dir.file("rank" + std::to_string(world_rank()) + ".safetensors");
  if (world_rank() == 0) {
    std::vector<NamedWeights> ours;
    for (const model::ParamTensor& t : trainer.model().layout().tensors())
      ours.push_back({t.name, std::vector<int64_t>(t.shape.dims.begin(), t.shape.dims.begin() + t.shape.rank),
                      std::vector<float>(static_cast<size_t>(t.numel()), 0.0f)});
    write_safetensors(weights, to_hf(c.model_spec(), ours), {});
  }
  std::string message;
  try {
    trainer.init_from(weights);
  } catch (const SafetensorsError& e) {
    message = e.what();
  }
  if (world_rank() == 1) EXPECT_NE(message.find("cannot read " + weights), std::string::npos) << message;
  else EXPECT_EQ(message, "another rank cannot initialise from " + weights + "; see its message.");
}

}  // namespace
}  // namespace mics

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mics::world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
