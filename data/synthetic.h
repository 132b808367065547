#pragma once
// Synthetic tokens for benchmarks and smoke tests: uniform over [0, vocab), a pure
// function of (seed, sample index, position), so no files are needed and runs repeat.
#include <cstdint>
#include <span>
#include <string>

#include "data/data_source.h"

namespace mics::data {

class SyntheticSource final : public TokenSource {
 public:
  // Throws DataError unless window_len > 0 and vocab > 0.
  SyntheticSource(int window_len, int32_t vocab, uint64_t seed);
  void window(int64_t index, std::span<int32_t> out) const override;
  int32_t vocab_bound() const override { return vocab_; }
  std::string describe() const override;
  std::string identity() const override { return describe(); }
  int64_t num_windows() const override { return 0; }

 private:
  int window_len_;
  int32_t vocab_;
  uint64_t seed_;
};

}  // namespace mics::data
