#pragma once
// Where a step's time goes, op by op (--profile). A ProfilingBackend forwards every op to
// the real backend and times it between two synchronisations of the device, so each op's
// time is its own, launch included; the run gets slower by those waits (and loses the
// overlap of compute with collectives), so a profiled run is for finding the expensive
// ops, not for quoting throughput. What the ops do not cover (waiting for collectives,
// host work) is the step's remainder.
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "kernels/ops.h"

namespace mics {

class OpProfile {
 public:
  struct Entry {
    int64_t calls = 0;
    double seconds = 0;
    double flops = 0;  // matrix-product ops only
  };
  void add(const char* op, double seconds, double flops);
  // Starts a new window (e.g. after the warm-up step).
  void reset() { entries_.clear(); }
  const std::map<std::string, Entry>& entries() const { return entries_; }

  // One row per op, slowest first: calls and milliseconds per step, share of the step,
  // TFLOP/s where the op is a matrix product; then the remainder of the step.
  std::string table(double step_seconds, int64_t steps) const;

 private:
  std::map<std::string, Entry> entries_;
};

// Wraps `inner` (which it owns); `profile` must outlive the returned backend.
std::unique_ptr<Backend> make_profiling_backend(std::unique_ptr<Backend> inner, OpProfile& profile);

}  // namespace mics
