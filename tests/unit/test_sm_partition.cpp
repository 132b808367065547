// The CUDA backend's record of a partitioned optimizer update (kernels/cuda/sm_partition.h),
// without a GPU: when the main stream's GEMMs are planned for the SMs the update leaves.
// The GPU test CudaSideQueue.GemmsBesideAnUnchunkedBoundedUpdateArePlannedForTheSmsItLeaves
// checks the same through the backend and cuBLASLt.
#include "kernels/cuda/sm_partition.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <set>
#include <stdexcept>
#include <utility>

namespace mics::cuda {
namespace {

// The backend's order of calls for one run_on_side_queue holding `updates` of n elements.
int64_t queue_side_work(SmPartition& p, int64_t fence, std::initializer_list<int64_t> updates) {
  p.side_work_begins();
  for (int64_t n : updates) p.update_queued(n);
  p.side_work_fenced(fence);
  return fence;
}

const auto never_done = [](int64_t) { return false; };

TEST(SmPartition, GemmsBesideAnUnchunkedBoundedUpdateArePlannedForTheRest) {
  SmPartition p(132, 32, /*chunked=*/false, /*target_gemms=*/true);
  EXPECT_TRUE(p.partitions());
  EXPECT_TRUE(p.targets_gemms());
  EXPECT_EQ(p.gemm_sms(never_done), 0) << "nothing queued yet";
  queue_side_work(p, 0, {1000});
  EXPECT_EQ(p.gemm_sms(never_done), 100);
  EXPECT_EQ(p.gemm_sms(never_done), 100) << "asking changes nothing";
  p.main_waits_for(0);
  EXPECT_EQ(p.gemm_sms(never_done), 0) << "after the main stream's wait at its fence";
}

TEST(SmPartition, OnlyTheLatestUpdatesFenceEndsIt) {
  SmPartition p(132, 32, false, true);
  queue_side_work(p, 4, {10});
  queue_side_work(p, 5, {10});
  queue_side_work(p, 6, {});  // side work holding no SMs (a queued sum) leaves it open
  EXPECT_EQ(p.open_fence(), 5);
  p.main_waits_for(4);
  EXPECT_EQ(p.gemm_sms(never_done), 100) << "the second update may still run";
  p.main_waits_for(6);
  EXPECT_EQ(p.gemm_sms(never_done), 0) << "a later fence stands for every earlier one";
}

TEST(SmPartition, SideWorkWithoutAnUpdateOrWithAnEmptyOneHoldsNothing) {
  SmPartition p(132, 32, false, true);
  queue_side_work(p, 0, {});
  queue_side_work(p, 1, {0});
  EXPECT_EQ(p.open_fence(), -1);
  EXPECT_EQ(p.gemm_sms(never_done), 0);
  // A run whose work threw after an update (no fence recorded) opens nothing; the next
  // run starts afresh.
  p.side_work_begins();
  p.update_queued(10);
  queue_side_work(p, 2, {});
  EXPECT_EQ(p.gemm_sms(never_done), 0);
}

TEST(SmPartition, ASynchronizeOrAFenceSeenDoneEndsIt) {
  SmPartition p(132, 32, false, true);
  queue_side_work(p, 7, {10});
  p.synchronized();
  EXPECT_EQ(p.gemm_sms(never_done), 0);

  queue_side_work(p, 8, {10});
  std::set<int64_t> asked;
  auto done_at_8 = [&](int64_t fence) {
    asked.insert(fence);
    return fence == 8;
  };
  EXPECT_EQ(p.gemm_sms(done_at_8), 0) << "seen done";
  EXPECT_EQ(asked, std::set<int64_t>{8});
  EXPECT_EQ(p.open_fence(), -1);
  asked.clear();
  EXPECT_EQ(p.gemm_sms(done_at_8), 0);
  EXPECT_TRUE(asked.empty()) << "no fence left to ask about";
}

TEST(SmPartition, AFailingQueryLeavesItAsItWas) {
  SmPartition p(132, 32, false, true);
  queue_side_work(p, 3, {10});
  EXPECT_THROW(p.gemm_sms([](int64_t) -> bool { throw std::runtime_error("device lost"); }), std::runtime_error);
  EXPECT_EQ(p.open_fence(), 3);
}

TEST(SmPartition, ChunkedUnboundedOrWholeDeviceUpdatesNeverPartition) {
  for (const auto& [side, chunked] : {std::pair{32, true}, std::pair{0, false}, std::pair{132, false},
                                      std::pair{200, false}}) {
    SCOPED_TRACE(testing::Message() << side << " SMs" << (chunked ? ", chunked" : ""));
    SmPartition p(132, side, chunked, true);
    EXPECT_FALSE(p.partitions());
    queue_side_work(p, 0, {1000});
    EXPECT_EQ(p.open_fence(), -1);
    EXPECT_EQ(p.gemm_sms(never_done), 0);
  }
}

TEST(SmPartition, TheTargetTurnedOffPlansForEverySmButStillTracks) {
  SmPartition p(132, 32, false, /*target_gemms=*/false);
  EXPECT_TRUE(p.partitions());
  EXPECT_FALSE(p.targets_gemms());
  queue_side_work(p, 0, {10});
  EXPECT_EQ(p.open_fence(), 0);
  EXPECT_EQ(p.gemm_sms([](int64_t) -> bool {
    ADD_FAILURE() << "the device was asked, with nothing to plan differently";
    return true;
  }),
            0);
}

}  // namespace
}  // namespace mics::cuda
