#pragma once
// Learning rate: linear warmup from 0, then constant, linear or cosine decay to min_lr at
// the last step.
#include <cstdint>
#include <string>

namespace mics {

struct LrSchedule {
  double lr = 0, min_lr = 0;
  int64_t warmup_steps = 0, total_steps = 1;
  std::string decay = "cosine";

  // Learning rate of optimizer step `step` (0-based).
  double at(int64_t step) const;
};

}  // namespace mics
