#pragma once
// What the model asks of whoever holds the parameters. The model never knows whether a
// layer is local, gathered from shards, or prefetched; it asks for "layer i, gathered"
// and hands back "layer i, gradients".
#include "kernels/tensor.h"

namespace mics::model {

// A layer's gradient buffer for one micro-step: the layer's padded span, same shape and
// dtype as its parameters. When `fresh`, its parameter entries hold nothing to keep (they
// were not zeroed): the model's first write to each overwrites it (Accumulate::no for the
// parameter gradients of an op), and a model that adds several contributions, or may write
// none, zeroes the span first. The entries between and after the tensors are zero either way.
struct GradBuffer {
  Tensor grads;
  bool fresh = false;
};

class ParamProvider {
 public:
  virtual ~ParamProvider() = default;
  // Layer `layer`'s working parameters as one 1-D view of its padded span, in the
  // model's compute dtype; valid until release_params(layer).
  virtual Tensor acquire_params(int layer) = 0;
  virtual void release_params(int layer) = 0;
  // The buffer the model writes layer `layer`'s gradients into during backward (adding to
  // what it holds unless it is fresh). Valid until grads_ready(layer).
  virtual GradBuffer grad_buffer(int layer) = 0;
  // The model will not touch this layer's gradients again in this micro-step.
  virtual void grads_ready(int layer) = 0;
};

}  // namespace mics::model
