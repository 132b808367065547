#include "data/batcher.h"

#include <algorithm>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>

#include "data/counter_rng.h"

namespace mics::data {
namespace {

// Keeps masking draws independent of the window order and synthetic tokens even when
// every component is given the same seed.
constexpr uint64_t kMaskStream = 0x6d61736bULL;  // "mask"

}  // namespace

Batcher::Batcher(const TokenSource& source, BatcherOptions opts) : source_(source), opts_(opts) {
  if (opts_.micro_batch <= 0 || opts_.seq_len <= 0) {
    throw std::invalid_argument("batcher needs positive micro_batch and seq_len, got " +
                                std::to_string(opts_.micro_batch) + " and " + std::to_string(opts_.seq_len));
  }
  if (opts_.objective == Objective::masked_lm) {
    if (!(opts_.mask_prob > 0.0 && opts_.mask_prob <= 1.0)) {
      throw std::invalid_argument("masked LM needs mask_prob in (0, 1], got " + std::to_string(opts_.mask_prob));
    }
    if (opts_.random_token_bound <= 0 || opts_.mask_token < 0) {
      throw std::invalid_argument("masked LM needs random_token_bound > 0 and mask_token >= 0, got " +
                                  std::to_string(opts_.random_token_bound) + " and " +
                                  std::to_string(opts_.mask_token));
    }
  }
}

int Batcher::window_len(Objective objective, int seq_len) {
  return objective == Objective::causal_lm ? seq_len + 1 : seq_len;
}

void Batcher::fill(int64_t first_sample, Batch& batch) const {
  const size_t B = static_cast<size_t>(opts_.micro_batch), T = static_cast<size_t>(opts_.seq_len);
  batch.batch_size = opts_.micro_batch;
  batch.seq_len = opts_.seq_len;
  batch.first_sample = first_sample;
  batch.labels.resize(B * T);

  if (opts_.objective == Objective::causal_lm) {
    // Each T+1 window is read straight into the token rows: its last token spills into
    // the next row's first slot, which that row's own window then overwrites. One spare
    // element keeps the last row's spill in bounds, so no scratch buffer is needed.
    batch.tokens.resize(B * T + 1);
    for (size_t s = 0; s < B; ++s) {
      int32_t* row = batch.tokens.data() + s * T;
      source_.window(first_sample + static_cast<int64_t>(s), std::span<int32_t>(row, T + 1));
      std::copy_n(row + 1, T, batch.labels.data() + s * T);
    }
    batch.tokens.resize(B * T);  // shrinking keeps the capacity for the next fill
    return;
  }

  batch.tokens.resize(B * T);
  const auto random_bound = static_cast<uint32_t>(opts_.random_token_bound);
  for (size_t s = 0; s < B; ++s) {
    const auto sample = static_cast<uint64_t>(first_sample) + s;
    int32_t* tokens = batch.tokens.data() + s * T;
    int32_t* labels = batch.labels.data() + s * T;
    source_.window(static_cast<int64_t>(sample), std::span<int32_t>(tokens, T));

    // BERT corruption of one selected position; `h` is that position's draw.
    auto corrupt = [&](size_t p, uint64_t h) {
      labels[p] = tokens[p];
      const uint64_t choice = mix64(h);
      const double u = unit_double(choice);
      if (u < 0.8) {
        tokens[p] = opts_.mask_token;
      } else if (u < 0.9) {
        tokens[p] = static_cast<int32_t>(below(mix64(choice), random_bound));
      }  // else: kept unchanged, but still predicted
    };

    bool any = false;
    for (size_t p = 0; p < T; ++p) {
      const uint64_t h = counter_hash(opts_.seed ^ kMaskStream, sample, p);
      if (unit_double(h) < opts_.mask_prob) {
        corrupt(p, h);
        any = true;
      } else {
        labels[p] = kIgnoreLabel;
      }
    }
    if (!any) {
      // A sample without a selected position would give a micro-batch with no loss;
      // counter T (one past the last position) picks a fallback deterministically.
      const size_t p = below(counter_hash(opts_.seed ^ kMaskStream, sample, T), static_cast<uint32_t>(T));
      corrupt(p, counter_hash(opts_.seed ^ kMaskStream, sample, p));
    }
  }
}

}  // namespace mics::data
