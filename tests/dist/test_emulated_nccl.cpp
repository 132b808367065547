// Training over NCCL's communicator, with NCCL and the CUDA runtime emulated over MPI
// (tests/emulation/nccl_emulator.cpp), against the same run over MPI's communicator: the
// GPU path's groups, prefetched gathers ordered by events, the hierarchical gather's two
// stages chained on the device, the two-hop gradient sync and NCCL's teardown, on 8 ranks
// of the CPU backend. Then the emulator's own checks. Part of
// test_collectives_emulated_nccl (its main is test_collectives').
#include <gtest/gtest.h>
#include <mpi.h>
#include <nccl.h>  // the emulator's
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/config.h"
#include "engine/process_groups.h"
#include "engine/topology.h"
#include "engine/trainer.h"
#include "kernels/ops.h"
#include "tests/dist/groups_under_test.h"
#include "tests/emulation/emulated_device_backend.h"

namespace {

using namespace mics;

struct Layout {
  int k, p;
  const char* hierarchical;
  const char* gradient_sync;
  bool overlap_optimizer = false;  // over NCCL only: the MPI run updates at once
};

// Where the NCCL run computes. On the CPU backend each op has finished when it returns, so
// only the collectives are asynchronous; on the emulated device (emulated_device_backend.h)
// the ops are kernels queued on a stream too, the optimizer's deferred update on a second
// one, and one of the three (main stream, side queue, collectives) lags far behind the
// others, so that a missing event wait lets a stale read through: 3 ms, far longer than
// the others' work between two waits on these shapes; the side queue 50 ms, since all of a
// step's updates are queued at once and the forward reaches the later layers' only after
// several gathers (a larger lag for the main stream would cost it at every synchronising
// read). The lag only decides whether a missing wait shows: correct code passes at any.
enum class Device { host, slow_main_stream, slow_collectives, slow_side_queue };

struct Run {
  Layout layout;
  Device device;
};

// The losses of a run (from checkpoint `resume` when given).
std::vector<double> train(const Config& c, const Topology& t, Backend& backend, std::unique_ptr<ProcessGroups> groups,
                          const std::string& resume = "") {
  const spdlog::level::level_enum saved = spdlog::get_level();
  spdlog::set_level(spdlog::level::warn);
  TrainerRuntime runtime;
  runtime.groups = std::move(groups);
  std::vector<double> losses;
  {
    Trainer trainer(c, backend, t, std::move(runtime));
    if (!resume.empty()) trainer.resume(resume);
    losses = trainer.run();
  }
  spdlog::set_level(saved);
  return losses;
}

class EmulatedNcclTraining : public ::testing::TestWithParam<Run> {
 protected:
  void TearDown() override {
    mics_emulated_set_collective_latency(1000);
    expect_no_misuse();
  }
};

// Both runs sum the same fp32 values with the same MPI reductions underneath (the
// emulator's collectives are MPI's nonblocking ones, as MPI's communicator's are), so
// their losses are the same bits; a misplaced chunk, a gather read before it landed, a
// gradient sent before it was computed, a layer read before its update or a sum over the
// wrong count changes them.
TEST_P(EmulatedNcclTraining, LossesAsOverMpi) {
  const Layout l = GetParam().layout;
  const Device device = GetParam().device;
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const Config c = load_config(std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json",
                               {"train.steps=4", "train.seq_len=32", "train.micro_batch_size=2",
                                "train.global_batch_size=32", "train.warmup_steps=1",
                                "train.grad_clip=0.01",  // always clipping: the norm's every bit counts
                                "mics.partition_size=" + std::to_string(l.p),
                                "mics.hierarchical_allgather=" + std::string(l.hierarchical),
                                "mics.gradient_sync=" + std::string(l.gradient_sync),
                                "runtime.ranks_per_node=" + std::to_string(l.k)});
  const Topology t = make_topology(rank, world, l.k, l.p, c.mics.hierarchical_allgather);
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  const std::vector<double> over_mpi = train(c, t, *cpu, build_mpi_groups(t));
  Config deferred = c;  // each layer's update at its next gather, which must not start before it
  deferred.runtime.overlap_optimizer = l.overlap_optimizer;
  std::vector<double> over_nccl;
  if (device == Device::host) {
    over_nccl = train(deferred, t, *cpu, groups_under_test(t));
  } else {
    const int slow = 3000;
    EmulatedDeviceLatency latency{0, 0};
    if (device == Device::slow_main_stream) latency.main_us = slow;
    if (device == Device::slow_side_queue) latency.side_us = 50000;
    mics_emulated_set_collective_latency(device == Device::slow_collectives ? slow : 0);
    const std::unique_ptr<Backend> gpu = make_emulated_device_backend(latency);
    over_nccl = train(deferred, t, *gpu, build_device_groups(t, *gpu, "nccl", emulated_device_stream(*gpu)));
  }
  ASSERT_EQ(over_mpi.size(), 4u);
  ASSERT_EQ(over_nccl.size(), over_mpi.size());
  for (size_t i = 0; i < over_mpi.size(); ++i)
    EXPECT_EQ(over_nccl[i], over_mpi[i]) << "step " << i + 1;
}

const Layout kLayouts[] = {{2, 4, "true", "two_hop"},
                           {2, 8, "true", "two_hop"},
                           {4, 4, "false", "two_hop"},
                           {2, 2, "false", "every_microstep"},
                           {2, 4, "true", "two_hop", true},
                           {2, 1, "false", "two_hop", true}};  // one GPU's benchmark path, and replicas

std::vector<Run> runs() {
  std::vector<Run> all;
  for (Device d : {Device::host, Device::slow_main_stream, Device::slow_collectives, Device::slow_side_queue})
    for (const Layout& l : kLayouts)
      if (d != Device::slow_side_queue || l.overlap_optimizer) all.push_back({l, d});  // the only users of it
  return all;
}

INSTANTIATE_TEST_SUITE_P(EightRanks, EmulatedNcclTraining, ::testing::ValuesIn(runs()), [](const auto& info) {
  const Layout& l = info.param.layout;
  std::string name = "k";
  name += std::to_string(l.k) + "_p" + std::to_string(l.p);
  if (std::string(l.hierarchical) == "true") name += "_hierarchical";
  name += std::string("_") + l.gradient_sync + (l.overlap_optimizer ? "_deferred_update" : "");
  switch (info.param.device) {
    case Device::host: return name + "_host";
    case Device::slow_main_stream: return name + "_slow_main_stream";
    case Device::slow_collectives: return name + "_slow_collectives";
    case Device::slow_side_queue: return name + "_slow_side_queue";
  }
  return name;
});

// Several ranks sharing one GPU (runtime.communicator "staged": MPI through host memory),
// on the emulated device with the update deferred to the side queue, its main stream (3 ms)
// or its side queue (50 ms) behind: the staging copies must see the kernels before them,
// the forward the update's fences.
TEST(EmulatedDeviceStaged, LossesAsOverMpiWithTheUpdateDeferred) {
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const Config c = load_config(std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json",
                               {"train.steps=4", "train.seq_len=32", "train.micro_batch_size=2",
                                "train.global_batch_size=32", "train.warmup_steps=1", "mics.partition_size=4",
                                "mics.hierarchical_allgather=true", "runtime.ranks_per_node=2"});
  const Topology t = make_topology(rank, world, 2, 4, c.mics.hierarchical_allgather);
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  const std::vector<double> over_mpi = train(c, t, *cpu, build_mpi_groups(t));
  Config deferred = c;
  deferred.runtime.overlap_optimizer = true;
  ASSERT_EQ(over_mpi.size(), 4u);
  for (const EmulatedDeviceLatency latency : {EmulatedDeviceLatency{3000, 0}, EmulatedDeviceLatency{0, 50000}}) {
    SCOPED_TRACE(latency.main_us ? "main stream behind" : "side queue behind");
    const std::unique_ptr<Backend> gpu = make_emulated_device_backend(latency);
    const std::vector<double> staged = train(deferred, t, *gpu, build_device_groups(t, *gpu, "staged", nullptr));
    ASSERT_EQ(staged.size(), over_mpi.size());
    for (size_t i = 0; i < over_mpi.size(); ++i) EXPECT_EQ(staged[i], over_mpi[i]) << "step " << i + 1;
  }
  expect_no_misuse();
}

// One rank on one device (the benchmark's path): the gradients are the model's own, in
// place, and each layer's sum of squares for the gradient norm is queued on the side queue
// as its backward ends, while the backward goes on; clipping is always on (a clip of 0.01),
// so that a norm summed over a gradient not yet written, or read before its sum ran,
// changes the update. With the main stream 3 ms behind (a sum that did not wait for the
// layer's backward reads the last step's gradient) and with the side queue 50 ms behind
// (a norm read before its sums ran): the CPU backend's losses, bit for bit; fp32 (the CPU
// backend's), one and two micro-steps (the second adds in place); the update deferred or not.
TEST(EmulatedDeviceOneRank, GradientNormLayerByLayerAsOnTheHost) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 1) << "run with one rank (ctest dist.emulated_device_one_rank)";
  const Topology t = make_topology(0, 1, 1, 1, "false");
  for (int micro_steps : {1, 2}) {
      for (bool deferred : {false, true}) {
        SCOPED_TRACE(testing::Message() << micro_steps << " micro-steps" << (deferred ? ", update deferred" : ""));
        Config c = load_config(std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json",
                               {"train.steps=3", "train.seq_len=32", "train.micro_batch_size=2",
                                "train.global_batch_size=" + std::to_string(2 * micro_steps), "train.warmup_steps=1",
                                "train.grad_clip=0.01", "mics.partition_size=1"});
        c.runtime.overlap_optimizer = deferred;
        const std::unique_ptr<Backend> cpu = make_cpu_backend();
        const std::vector<double> host = train(c, t, *cpu, build_mpi_groups(t));
        ASSERT_EQ(host.size(), 3u);
        for (const EmulatedDeviceLatency latency : {EmulatedDeviceLatency{3000, 0}, EmulatedDeviceLatency{0, 50000}}) {
          SCOPED_TRACE(latency.main_us ? "main stream behind" : "side queue behind");
          const std::unique_ptr<Backend> gpu = make_emulated_device_backend(latency);
          const std::vector<double> device = train(c, t, *gpu, build_mpi_groups(t));
          ASSERT_EQ(device.size(), host.size());
          for (size_t i = 0; i < host.size(); ++i) EXPECT_EQ(device[i], host[i]) << "step " << i + 1;
        }
      }
  }
}

// A checkpoint written while the side queue still holds the optimizer's deferred updates
// (they must land before the shards are copied out), over NCCL, with the side queue far
// behind: the run resumed from it continues bit for bit.
TEST(EmulatedDeviceCheckpoint, ResumesBitForBitWithTheUpdateDeferred) {
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  char dir[256] = {};  // one folder for every rank: rank 0's, by name
  if (rank == 0) {
    std::snprintf(dir, sizeof dir, "%s", (std::filesystem::temp_directory_path() / "mics-emulated-ckpt-XXXXXX").c_str());
    if (mkdtemp(dir) == nullptr) dir[0] = 0;
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  ASSERT_NE(dir[0], 0) << "no temporary folder";
  const std::string root = dir;
  Config c = load_config(std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json",
                         {"train.steps=4", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_size=32",
                          "train.warmup_steps=1", "mics.partition_size=4", "mics.hierarchical_allgather=true",
                          "runtime.ranks_per_node=2", "runtime.overlap_optimizer=true", "checkpoint.every=2",
                          "checkpoint.dir=\"" + root + "/full\""});
  const Topology t = make_topology(rank, world, 2, 4, c.mics.hierarchical_allgather);
  struct CollectivesAtOnce {  // for this test only, however it ends
    CollectivesAtOnce() { mics_emulated_set_collective_latency(0); }
    ~CollectivesAtOnce() { mics_emulated_set_collective_latency(1000); }
  } at_once;
  auto run = [&](const Config& config, const std::string& resume) {
    const std::unique_ptr<Backend> gpu = make_emulated_device_backend({0, 50000});
    return train(config, t, *gpu, build_device_groups(t, *gpu, "nccl", emulated_device_stream(*gpu)), resume);
  };
  const std::vector<double> full = run(c, "");
  Config again = c;
  again.checkpoint.dir = root + "/again";
  const std::vector<double> resumed = run(again, root + "/full/step-000002");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove_all(root);
  expect_no_misuse();
  ASSERT_EQ(full.size(), 4u);
  ASSERT_EQ(resumed.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(resumed[i], full[i + 2]) << "step " << i + 3;
}

// The emulator fails what NCCL leaves undefined, so that the tests above would see the
// engine do it. A communicator of the whole world of its own, on every rank.
class NcclEmulator : public ::testing::Test {
 protected:
  void SetUp() override {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    ncclUniqueId id;
    ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);  // (the emulator's ids are all alike)
    ASSERT_EQ(ncclCommInitRank(&comm_, world_, id, rank_), ncclSuccess);
    ASSERT_EQ(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, 0), cudaSuccess);
    ASSERT_EQ(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), cudaSuccess);
  }
  void TearDown() override {
    EXPECT_EQ(cudaEventDestroy(done_), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    EXPECT_EQ(ncclCommDestroy(comm_), ncclSuccess);
    expect_no_misuse();
  }
  // Blocks until the stream's work so far has completed.
  void synchronize() {
    ASSERT_EQ(cudaEventRecord(done_, stream_), cudaSuccess);
    while (cudaEventQuery(done_) == cudaErrorNotReady) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int rank_ = 0, world_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
};

TEST_F(NcclEmulator, GathersInPlaceAndNamesRanksThatIssueDifferentCounts) {
  std::vector<float> layer(static_cast<size_t>(world_) * 6, -1.0f);
  for (size_t i = 0; i < 5; ++i) layer[static_cast<size_t>(rank_) * 5 + i] = static_cast<float>(rank_ * 5) + i;
  ASSERT_EQ(ncclAllGather(layer.data() + rank_ * 5, layer.data(), 5, ncclFloat32, comm_, stream_), ncclSuccess);
  synchronize();
  for (size_t i = 0; i < static_cast<size_t>(world_) * 5; ++i) ASSERT_EQ(layer[i], static_cast<float>(i)) << i;
  const size_t count = rank_ == 3 ? 6 : 5;  // rank 3 disagrees
  ASSERT_EQ(ncclAllGather(layer.data() + static_cast<size_t>(rank_) * count, layer.data(), count, ncclFloat32, comm_,
                          stream_),
            ncclSuccess);
  synchronize();
  ncclResult_t async = ncclSuccess;
  ASSERT_EQ(ncclCommGetAsyncError(comm_, &async), ncclSuccess);
  EXPECT_EQ(async, ncclSystemError);
  const std::vector<std::string> misuse = mics_emulated_take_misuse();
  ASSERT_EQ(misuse.size(), 1u);
  const std::string others = rank_ == 3 ? "0, 1, 2, 4, 5, 6, 7" : "3";
  EXPECT_NE(misuse[0].find("as its collective number 1, all_gather of " + std::to_string(count) +
                           " float32, while rank(s) " + others + " of it issued something else"),
            std::string::npos)
      << misuse[0];
}

TEST_F(NcclEmulator, AnInPlaceAllGatherFromAnotherSlotIsRefused) {
  std::vector<float> layer(static_cast<size_t>(world_) * 4, 0.0f);
  const int slot = (rank_ + 1) % world_;
  EXPECT_EQ(ncclAllGather(layer.data() + slot * 4, layer.data(), 4, ncclFloat32, comm_, stream_), ncclInvalidArgument);
  const std::vector<std::string> misuse = mics_emulated_take_misuse();
  ASSERT_EQ(misuse.size(), 1u);
  EXPECT_NE(misuse[0].find("must send from recvbuff + rank * sendcount"), std::string::npos) << misuse[0];
}

TEST_F(NcclEmulator, AReceiveLongerThanItsSendIsNamed) {
  std::vector<float> data(6, 1.0f);
  const int partner = rank_ ^ 1;  // pairs 0-1, 2-3, ...: the even rank sends 4, the odd expects 6
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  if (rank_ % 2 == 0) {
    ASSERT_EQ(ncclSend(data.data(), 4, ncclFloat32, partner, comm_, stream_), ncclSuccess);
  } else {
    ASSERT_EQ(ncclRecv(data.data(), 6, ncclFloat32, partner, comm_, stream_), ncclSuccess);
  }
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  synchronize();
  const std::vector<std::string> misuse = mics_emulated_take_misuse();
  if (rank_ % 2 == 0) {
    EXPECT_TRUE(misuse.empty());
  } else {
    ASSERT_EQ(misuse.size(), 1u);
    EXPECT_NE(misuse[0].find("an ncclRecv of 24 bytes from peer " + std::to_string(partner) + " got a send of 16"),
              std::string::npos)
        << misuse[0];
  }
}

// A collective that one rank never issues (alive, answering liveness pings): the rank
// waiting on it gives up after runtime.comm_timeout_s, naming the group and what to check,
// and aborts NCCL, whose communicators from then on start and wait for nothing; mics-train
// then ends the job with MPI_Abort, as this test does. Run alone on 2 ranks
// (dist.emulated_nccl_deadline), which passes on the line this prints.
TEST(EmulatedNcclDeadline, ACollectiveNoPeerJoinsEndsInAnAbort) {
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ASSERT_EQ(world, 2);
  const Topology t = make_topology(rank, world, 1, 2, "false");
  const std::unique_ptr<ProcessGroups> g = groups_under_test(t);
  if (rank == 1) {  // answers pings until rank 0's MPI_Abort ends it
    wait_until([] { return false; }, "the test's idle rank", {});
    return;
  }
  set_comm_timeout(1.0);
  std::vector<float> layer(8, 0.0f);
  Request gather = g->partition->all_gather(layer.data(), 4, 1, 4, 0);
  std::string message = "(no timeout)";
  try {
    g->partition->wait(gather);
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("a collective on the partition group of ranks 0..1 did not complete within "
                         "'runtime.comm_timeout_s' (1 s) on rank 0"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("every rank answered a liveness ping within 1 s, so none is stalled: the ranks disagree on "
                         "which collective comes next, or NCCL's transport between them is stuck"),
            std::string::npos)
      << message;
  Request after_abort = g->partition->all_gather(layer.data(), 4, 1, 4, 0);
  EXPECT_EQ(after_abort, nullptr);
  g->partition->wait(after_abort);  // returns at once
  expect_no_misuse();
  if (!::testing::Test::HasFailure()) std::printf("emulated NCCL deadline: checked\n");
  std::fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

}  // namespace
