#pragma once
// What the model asks of whoever holds the parameters. The model never knows whether a
// layer is local, gathered from shards, or prefetched; it asks for "layer i, gathered"
// and hands back "layer i, gradients".
#include "kernels/tensor.h"

namespace mics::model {

class ParamProvider {
 public:
  virtual ~ParamProvider() = default;
  // Layer `layer`'s working parameters as one 1-D view of its padded span, in the
  // model's compute dtype; valid until release_params(layer).
  virtual Tensor acquire_params(int layer) = 0;
  virtual void release_params(int layer) = 0;
  // The buffer the model accumulates (+=) layer `layer`'s gradients into during backward;
  // same shape and dtype as the parameters. Valid until grads_ready(layer).
  virtual Tensor grad_buffer(int layer) = 0;
  // The model will not touch this layer's gradients again in this micro-step.
  virtual void grads_ready(int layer) = 0;
};

}  // namespace mics::model
