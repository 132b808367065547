#pragma once
// AdamW over a span of the flat buffer (a whole buffer now, a rank's shard under MiCS),
// applying weight decay only to the tensors in the decay mask. Shards cut across tensor
// boundaries, so the span is split into per-tensor segments once, at construction.
#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "model/param_layout.h"

namespace mics {

class AdamW {
 public:
  // [begin, end) of the flat buffer that the given views cover.
  AdamW(const model::ParamLayout& layout, int64_t begin, int64_t end);
  // One update; spec.weight_decay is applied to decay-mask segments, 0 elsewhere.
  void step(Backend& backend, Tensor param, Tensor grad, Tensor m, Tensor v,
            const AdamWSpec& spec) const;

 private:
  struct Segment {
    int64_t offset, size;  // relative to begin
    bool decay;
  };
  std::vector<Segment> segments_;
};

}  // namespace mics
