#pragma once
// Parameter store of a single process: the whole flat buffer of fp32 master weights, the
// gradient accumulator and AdamW's m and v live here, and the model's working copy is
// the master itself (fp32 compute). The MiCS runtime's sharded store has the same duties
// for 1/p of the buffer.
#include <cstdint>

#include "kernels/ops.h"
#include "model/param_layout.h"
#include "model/param_provider.h"

namespace mics {

class LocalParamStore final : public model::ParamProvider {
 public:
  LocalParamStore(Backend& backend, const model::ParamLayout& layout, uint64_t init_seed);

  Tensor acquire_params(int layer) override;
  void release_params(int layer) override {}
  Tensor grad_buffer(int layer) override;
  void grads_ready(int layer) override {}

  // Whole-buffer views, [total_elements] fp32 each.
  Tensor master() const { return master_.view(DType::f32, {total_}); }
  Tensor grads() const { return grads_.view(DType::f32, {total_}); }
  Tensor adam_m() const { return m_.view(DType::f32, {total_}); }
  Tensor adam_v() const { return v_.view(DType::f32, {total_}); }
  void zero_grads();

 private:
  Tensor span(const DeviceBuffer& buffer, int layer) const;

  Backend& be_;
  const model::ParamLayout& layout_;
  int64_t total_;
  DeviceBuffer master_, grads_, m_, v_;
};

}  // namespace mics
