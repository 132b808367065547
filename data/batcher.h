#pragma once
// Turns token windows into model micro-batches: next-token labels for causal LM,
// BERT's masked-LM corruption (15% of positions; 80% [MASK], 10% random, 10% kept).
#include <cstdint>

#include "data/batch.h"
#include "data/data_source.h"

namespace mics::data {

enum class Objective { causal_lm, masked_lm };

struct BatcherOptions {
  Objective objective = Objective::causal_lm;
  int micro_batch = 0;  // B
  int seq_len = 0;      // T
  double mask_prob = 0.15;     // masked_lm only
  int32_t mask_token = 0;      // masked_lm only: id of [MASK]
  int32_t random_token_bound = 0;  // masked_lm: "random" replacements drawn from [0, bound)
  uint64_t seed = 0;
};

class Batcher {
 public:
  // source must outlive the batcher; its windows are T+1 long for causal LM, T for masked LM.
  Batcher(const TokenSource& source, BatcherOptions opts);
  static int window_len(Objective objective, int seq_len);
  // Fills `batch` (re-using its storage) with samples [first_sample, first_sample + B).
  void fill(int64_t first_sample, Batch& batch) const;

 private:
  const TokenSource& source_;
  BatcherOptions opts_;
};

}  // namespace mics::data
