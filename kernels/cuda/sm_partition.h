#pragma once
// When the CUDA backend's main stream shares the GPU with a partitioned optimizer update
// (runtime.overlap_optimizer_sms N with runtime.overlap_optimizer_chunked false: each
// layer's update a launch of at most N blocks of 1024 threads that holds N SMs until it is
// done), and so how many SMs its GEMMs are planned for (cuBLASLt's SM count target):
// planned for every SM, a product's last wave waits for SMs the update keeps.
//
// As the host sees it, an update holds its SMs from its queueing on the side queue until
// the main stream waits at a fence at or after it, until both streams are synchronised, or
// until its fence is seen done (the host runs ahead of the device, so "done" is seen late,
// never early). The side queue runs its work in order, so the latest partitioning update's
// fence stands for all of them. Host-only (no CUDA header): the backend asks its events
// through gemm_sms's callback, and tests/unit/test_sm_partition.cpp runs it without a GPU.
#include <cstdint>

namespace mics::cuda {

class SmPartition {
 public:
  // side_sms: the bound (0: none); target_gemms false keeps every GEMM planned for every SM
  // (only to measure what the target gains).
  SmPartition(int device_sms, int side_sms, bool chunked, bool target_gemms)
      : device_sms_(device_sms), side_sms_(side_sms), chunked_(chunked), target_gemms_(target_gemms) {}

  // Whether the side queue's updates hold a partition of the SMs at all: bounded below the
  // device's count, unchunked.
  bool partitions() const { return side_sms_ > 0 && !chunked_ && side_sms_ < device_sms_; }
  // Whether the main stream's GEMMs are planned for the partition's rest while it holds.
  bool targets_gemms() const { return partitions() && target_gemms_; }

  // run_on_side_queue: its work begins queuing; an update of n elements was queued in it;
  // its fence was recorded after it.
  void side_work_begins() { holds_ = false; }
  void update_queued(int64_t n) {
    if (n > 0 && partitions()) holds_ = true;
  }
  void side_work_fenced(int64_t fence) {
    if (holds_) open_fence_ = fence;
    holds_ = false;
  }
  // The main stream waits at `fence` (everything the side queue ran up to it is done by then).
  void main_waits_for(int64_t fence) {
    if (open_fence_ >= 0 && fence >= open_fence_) open_fence_ = -1;
  }
  void synchronized() { open_fence_ = -1; }

  // The SMs a main-stream GEMM queued now is planned for: the partition's rest while an
  // update holds SMs, else 0 (the device's count). `done(fence)`: whether that fence's work
  // has been seen done (it may throw; the partition then stays as it was).
  template <class Done>
  int gemm_sms(Done&& done) {
    if (open_fence_ < 0 || !target_gemms_) return 0;  // (nothing to ask the device)
    if (done(open_fence_)) {
      open_fence_ = -1;
      return 0;
    }
    return target_gemms_ ? device_sms_ - side_sms_ : 0;
  }

  // The fence of the latest partitioning update not yet seen passed; -1: none.
  int64_t open_fence() const { return open_fence_; }

 private:
  int device_sms_, side_sms_;
  bool chunked_, target_gemms_;
  int64_t open_fence_ = -1;
  bool holds_ = false;  // the side-queue work being queued launched a partitioning update
};

}  // namespace mics::cuda
