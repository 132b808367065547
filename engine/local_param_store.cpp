#include "engine/local_param_store.h"

#include <vector>

namespace mics {

LocalParamStore::LocalParamStore(Backend& backend, const model::ParamLayout& layout,
                                 uint64_t init_seed)
    : be_(backend), layout_(layout), total_(layout.total_elements()),
      master_(backend, sizeof(float) * static_cast<size_t>(total_)),
      grads_(backend, sizeof(float) * static_cast<size_t>(total_)),
      m_(backend, sizeof(float) * static_cast<size_t>(total_)),
      v_(backend, sizeof(float) * static_cast<size_t>(total_)) {
  std::vector<float> init(static_cast<size_t>(total_));
  model::init_parameters(layout, init_seed, 0, total_, init.data());
  be_.copy_from_host(master_.data(), init.data(), sizeof(float) * init.size());
  be_.fill_zero(grads());
  be_.fill_zero(adam_m());
  be_.fill_zero(adam_v());
}

Tensor LocalParamStore::span(const DeviceBuffer& buffer, int layer) const {
  const model::LayerSpan& s = layout_.layers().at(static_cast<size_t>(layer));
  return buffer.view(DType::f32, {total_}).slice(s.begin, {s.size});
}

Tensor LocalParamStore::acquire_params(int layer) { return span(master_, layer); }
Tensor LocalParamStore::grad_buffer(int layer) { return span(grads_, layer); }
void LocalParamStore::zero_grads() { be_.fill_zero(grads()); }

}  // namespace mics
