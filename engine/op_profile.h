#pragma once
// Where a step's time goes, op by op (--profile). A ProfilingBackend forwards every op to
// the real backend and times it between two marks on a timeline, read back at the end of
// each step:
//  * the backend's own (CUDA: events on its stream): nothing is synchronised, so the steps
//    run at nearly their unprofiled speed and the remainder of the step is the time the
//    device spent outside the ops (waiting for the host or for collectives);
//  * else the host clock, each mark after a synchronisation (CPU): launch included.
// A profiled run is for finding the expensive ops; throughput is quoted from plain runs.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/ops.h"

namespace mics {

class OpProfile {
 public:
  struct Entry {
    int64_t calls = 0;
    double seconds = 0;
    double flops = 0;  // matrix-product ops only
    double rows = 0;   // linear ops: the input rows of every call, summed
  };
  // A linear op's shape: its rows (tokens), in and out features. Linear ops are also counted
  // per (name, features, rows within a power of two): BERT's head sees a different number of
  // masked rows every batch, and its 2560->2560 transform is not the layers' projection.
  struct LinearShape {
    int64_t rows = 0, in = 0, out = 0;
  };
  using ShapeKey = std::tuple<std::string, int64_t, int64_t, int>;  // op, in, out, bit width of rows
  void add(const char* op, double seconds, double flops, const LinearShape* shape = nullptr);
  // An op timed on `timeline` from mark `begin` to mark `end`, added at the next settle().
  void add_timed(const char* op, double flops, DeviceTimeline& timeline, int64_t begin, int64_t end,
                 const LinearShape* shape = nullptr);
  // Reads the times of the ops added since the last settle (waiting for them).
  void settle();
  // How the ops were timed (the timeline's how()); empty before any was.
  const char* timing() const { return timing_; }
  // Starts a new window (e.g. after the warm-up step): ops still pending are dropped.
  void reset();
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<ShapeKey, Entry>& linear_shapes() const { return shapes_; }

  // One row per op, slowest first: calls and milliseconds per step, share of the step,
  // TFLOP/s where the op is a matrix product; then the remainder of the step; then the
  // linear ops per shape, slowest first (which products fall short of the GEMM peak).
  std::string table(double step_seconds, int64_t steps) const;

 private:
  struct Pending {
    const char* op;
    double flops;
    DeviceTimeline* timeline;
    int64_t begin, end;
    std::optional<LinearShape> shape;  // linear ops only
  };
  std::map<std::string, Entry> entries_;
  std::map<ShapeKey, Entry> shapes_;
  std::vector<Pending> pending_;
  const char* timing_ = "";
};

// Wraps `inner` (which it owns); `profile` must outlive the returned backend.
std::unique_ptr<Backend> make_profiling_backend(std::unique_ptr<Backend> inner, OpProfile& profile);

}  // namespace mics
