#include "data/synthetic.h"

#include <stdexcept>

#include "data/counter_rng.h"

namespace mics::data {

SyntheticSource::SyntheticSource(int window_len, int32_t vocab, uint64_t seed)
    : window_len_(window_len), vocab_(vocab), seed_(seed) {
  if (window_len <= 0) {
    throw DataError("synthetic data needs a positive window length, got " + std::to_string(window_len) + ".");
  }
  if (vocab <= 0) {
    throw DataError("synthetic data needs a positive synthetic_vocab, got " + std::to_string(vocab) + ".");
  }
}

void SyntheticSource::window(int64_t index, std::span<int32_t> out) const {
  if (out.size() != static_cast<size_t>(window_len_)) {
    throw std::invalid_argument("synthetic window: output size differs from the window length");
  }
  if (index < 0) throw std::out_of_range("synthetic window: sample index must be non-negative");
  const auto bound = static_cast<uint32_t>(vocab_);
  for (size_t p = 0; p < out.size(); ++p) {
    out[p] = static_cast<int32_t>(below(counter_hash(seed_, static_cast<uint64_t>(index), p), bound));
  }
}

std::string SyntheticSource::describe() const {
  return "synthetic: vocab " + std::to_string(vocab_) + ", seed " + std::to_string(seed_);
}

}  // namespace mics::data
