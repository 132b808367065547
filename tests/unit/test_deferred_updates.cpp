// DeferredUpdates (runtime.overlap_optimizer) against a recording side queue: the order in
// which updates are queued, which fence a layer's first use waits for, and, without a side
// queue, that each layer's update runs once, at its first use. The CUDA stream behind a
// real side queue is checked on a GPU (CudaSideQueue); the training runs are checked
// end to end on the CPU (test_training, test_mics_runs, test_checkpoint).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "engine/deferred_updates.h"

namespace {

// Runs side work at once, as a queue that is always idle would, and records everything.
class RecordingQueue final : public mics::SideQueue {
 public:
  explicit RecordingQueue(bool side) : side_(side) {}
  bool has_side_queue() const override { return side_; }
  int64_t run_on_side_queue(const std::function<void()>& work) override {
    log.push_back("queue");
    work();
    return next_fence_++;
  }
  void wait_for_fence(int64_t fence) override { log.push_back("wait " + std::to_string(fence)); }
  std::vector<std::string> log;

 private:
  bool side_;
  int64_t next_fence_ = 100;
};

TEST(DeferredUpdates, SideQueueTakesTheLayersInForwardOrderAndFirstUseWaitsForItsFence) {
  RecordingQueue queue(true);
  mics::DeferredUpdates updates(queue, 4);
  auto update = [&](int l) { queue.log.push_back("update " + std::to_string(l)); };
  // The forward's order, with a layer used twice (tied weights); layer 3 left out. The
  // layer read first is updated on the main queue, after the others are queued.
  updates.defer(update, {0, 2, 1, 0});
  EXPECT_EQ(queue.log, (std::vector<std::string>{"queue", "update 2", "queue", "update 1", "queue", "update 3",
                                                 "update 0"}));
  queue.log.clear();
  updates.ensure(1);  // fence 101: layer 1 was queued second
  updates.ensure(1);  // once only
  updates.ensure(0);  // done already: no wait
  EXPECT_EQ(queue.log, (std::vector<std::string>{"wait 101"}));
  queue.log.clear();
  updates.settle();  // the rest, by layer
  EXPECT_EQ(queue.log, (std::vector<std::string>{"wait 100", "wait 102"}));
  queue.log.clear();
  updates.settle();
  updates.ensure(3);
  EXPECT_TRUE(queue.log.empty());
}

// With p > 1 the first layer's acquire also starts the next layers' gathers, each behind
// its update on the main queue: the store asks for those in line too.
TEST(DeferredUpdates, TheLayersTheForwardWaitsForFirstAreUpdatedInLine) {
  RecordingQueue queue(true);
  mics::DeferredUpdates updates(queue, 4);
  auto update = [&](int l) { queue.log.push_back("update " + std::to_string(l)); };
  updates.defer(update, {3, 1, 0, 2}, 2);
  EXPECT_EQ(queue.log, (std::vector<std::string>{"queue", "update 0", "queue", "update 2", "update 3", "update 1"}));
  queue.log.clear();
  updates.ensure(3);
  updates.ensure(1);  // in line: nothing to wait for
  updates.ensure(2);  // fence 101
  EXPECT_EQ(queue.log, (std::vector<std::string>{"wait 101"}));
  queue.log.clear();
  updates.defer(update, {0, 1}, 9);  // more than there are: every layer in line, none queued
  EXPECT_EQ(queue.log, (std::vector<std::string>{"wait 100", "update 0", "update 1", "update 2", "update 3"}));
}

TEST(DeferredUpdates, WithoutASideQueueEachUpdateRunsOnceAtFirstUse) {
  RecordingQueue queue(false);
  mics::DeferredUpdates updates(queue, 3);
  using Ran = std::vector<std::pair<char, int>>;  // (which step's update, layer)
  Ran ran;
  updates.defer([&](int l) { ran.emplace_back('a', l); }, {});
  EXPECT_TRUE(ran.empty()) << "nothing runs before its layer is used";
  updates.ensure(1);
  updates.ensure(1);
  EXPECT_EQ(ran, (Ran{{'a', 1}}));
  // The next step's update: what is still pending of this one runs first, in layer order.
  updates.defer([&](int l) { ran.emplace_back('b', l); }, {2, 1, 0});
  EXPECT_EQ(ran, (Ran{{'a', 1}, {'a', 0}, {'a', 2}}));
  updates.settle();
  EXPECT_EQ(ran, (Ran{{'a', 1}, {'a', 0}, {'a', 2}, {'b', 0}, {'b', 1}, {'b', 2}}));
  EXPECT_TRUE(queue.log.empty()) << "no side queue, no fences";
}

}  // namespace
