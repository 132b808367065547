#include "engine/optimizer.h"

#include <algorithm>

namespace mics {

AdamW::AdamW(const model::ParamLayout& layout, const std::vector<model::FlatRange>& held) {
  for (const model::FlatRange& run : held) {
    run_begin_.push_back(segments_.size());
    const int64_t end = run.flat_begin + run.size;
    for (const model::ParamTensor& t : layout.tensors()) {
      const int64_t lo = std::max(run.flat_begin, t.offset), hi = std::min(end, t.offset + t.numel());
      if (lo >= hi) continue;
      const Segment next{run.local_offset + lo - run.flat_begin, hi - lo, t.decay};
      // Back-to-back tensors of a run with the same decay are one update (a layer's bias
      // and the LayerNorm after it): fewer launches, the same arithmetic per element.
      if (segments_.size() > run_begin_.back() && segments_.back().decay == next.decay &&
          segments_.back().offset + segments_.back().size == next.offset)
        segments_.back().size += next.size;
      else
        segments_.push_back(next);
    }
  }
  run_begin_.push_back(segments_.size());
}

void AdamW::step(Backend& backend, Tensor param, Tensor grad, Tensor m, Tensor v,
                 const AdamWSpec& spec, Tensor param_copy) const {
  for (size_t r = 0; r + 1 < run_begin_.size(); ++r) step_run(backend, r, param, grad, m, v, spec, param_copy);
}

void AdamW::step_run(Backend& backend, size_t run, Tensor param, Tensor grad, Tensor m, Tensor v,
                     const AdamWSpec& spec, Tensor param_copy) const {
  AdamWSpec no_decay = spec;
  no_decay.weight_decay = 0.0f;
  for (size_t i = run_begin_.at(run); i < run_begin_.at(run + 1); ++i) {
    const Segment& s = segments_[i];
    backend.adamw(param.slice(s.offset, {s.size}), grad.slice(s.offset, {s.size}),
                  m.slice(s.offset, {s.size}), v.slice(s.offset, {s.size}),
                  s.decay ? spec : no_decay,
                  param_copy.empty() ? Tensor{} : param_copy.slice(s.offset, {s.size}));
  }
}

}  // namespace mics
