#pragma once
// AdamW over the runs of the flat buffer a rank holds (its shard: one run per layer),
// applying weight decay only to the tensors in the decay mask. Shards cut across tensor
// boundaries, so the runs are split into segments of one decay setting once, at construction.
#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "model/param_layout.h"

namespace mics {

class AdamW {
 public:
  // `held`: where each run of the flat buffer sits in the views given to step().
  AdamW(const model::ParamLayout& layout, const std::vector<model::FlatRange>& held);
  // One update; spec.weight_decay is applied to decay-mask segments, 0 elsewhere.
  // param_copy: empty, or a compute-dtype view like param that receives the new values.
  void step(Backend& backend, Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec,
            Tensor param_copy) const;
  // The same update, of run `run` of `held` only (a layer's slices: the runs are one per layer).
  void step_run(Backend& backend, size_t run, Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWSpec& spec,
                Tensor param_copy) const;

 private:
  struct Segment {
    int64_t offset, size;  // in the local views
    bool decay;
  };
  std::vector<Segment> segments_;
  std::vector<size_t> run_begin_;  // run r's segments: [run_begin_[r], run_begin_[r + 1])
};

}  // namespace mics
