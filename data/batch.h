#pragma once
// One micro-batch as the model consumes it, in host memory.
#include <cstdint>
#include <vector>

namespace mics::data {

// Label value for positions that carry no loss (PyTorch's ignore_index convention).
inline constexpr int32_t kIgnoreLabel = -100;

struct Batch {
  int batch_size = 0;  // B
  int seq_len = 0;     // T
  std::vector<int32_t> tokens;  // [B*T] model inputs, row-major by sample
  std::vector<int32_t> labels;  // [B*T] target per position or kIgnoreLabel
  int64_t first_sample = 0;     // global index of sample 0 of this micro-batch
};

}  // namespace mics::data
