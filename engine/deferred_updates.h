#pragma once
// The optimizer's update of each layer, deferred to that layer's next use
// (runtime.overlap_optimizer): on a backend with a side queue (CUDA: a second stream) every
// layer's update but the first the forward reads is queued there at once, in the order the
// next forward reads the layers, and the first use of a layer makes the main queue wait for
// its own; so the update of the later layers, bound by memory bandwidth, runs alongside the
// forward's GEMMs of the earlier ones. (The first is updated on the main queue at once.) Elsewhere (the CPU) a layer's update runs at its first use, which gives the
// same arithmetic in the same order per element, and makes a use that forgot to ask for it
// read stale weights, which the tests see.
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/ops.h"

namespace mics {

class DeferredUpdates {
 public:
  DeferredUpdates(SideQueue& queue, int layers);

  // This step's update: `update(l)` updates layer l's slices of the shards. Earlier
  // updates are settled first. `order`: the layers in the order the next forward uses them
  // (any layer it leaves out follows, by index). With a side queue, the first `in_line`
  // layers of that order are updated on the main queue (after the rest are queued): those
  // the forward waits for before its first op anyway.
  void defer(std::function<void(int layer)> update, const std::vector<int>& order, size_t in_line = 1);
  // Layer `layer`'s update has happened, or the main queue waits for it, before any work
  // queued after this call.
  void ensure(int layer);
  // Every layer's (before anything reads or writes whole shards: a checkpoint, new weights).
  void settle();

 private:
  static constexpr int64_t kDone = -2, kAtFirstUse = -1;  // else a side-queue fence
  SideQueue& queue_;
  std::function<void(int)> update_;
  std::vector<int64_t> state_;  // per layer
  std::vector<int> sequence_;   // defer's scratch: the layers in queueing order
  std::vector<bool> seen_;
};

}  // namespace mics
