#pragma once
// The model interface the engine trains: forward and backward of one micro-batch over the
// backend interface, parameters through a ParamProvider.
#include <cstdint>
#include <memory>

#include "kernels/ops.h"
#include "model/model_spec.h"
#include "model/param_layout.h"
#include "model/param_provider.h"

namespace mics::model {

// One micro-batch in host memory. labels < 0 carry no loss.
struct TokenBatch {
  const int32_t* tokens = nullptr;  // [B*T]
  const int32_t* labels = nullptr;  // [B*T]
  int64_t batch = 0;                // B, at most the model's micro-batch
  int64_t seq = 0;                  // T, equal to the model's sequence length
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ParamLayout& layout() const = 0;
  virtual const ModelSpec& spec() const = 0;
  // Forward of one micro-batch; returns the mean loss over its labelled positions (0 when it
  // has none). `dropout_seed` keys every dropout mask of this micro-batch. With
  // grad_scale > 0 the loss gradient, times grad_scale, is formed in the same pass over
  // the logits, ready for backward(); 0 evaluates only.
  virtual double forward(ParamProvider& params, const TokenBatch& batch, uint64_t dropout_seed,
                         double grad_scale) = 0;
  // Backward of the last forward (which had grad_scale > 0): gradients accumulate (+=) into
  // the provider's gradient buffers.
  virtual void backward(ParamProvider& params) = 0;
  // Bytes of activations and workspace allocated for the configured micro-batch.
  virtual size_t activation_bytes() const = 0;
};

// The layout alone, for dry runs and the parameter store: nothing is allocated.
ParamLayout build_layout(const ModelSpec& spec, int64_t shard_multiple);

// Allocates activations for micro-batch B and sequence length T in `dtype`.
std::unique_ptr<Model> make_model(const ModelSpec& spec, Backend& backend, DType dtype,
                                  int64_t micro_batch, int64_t seq, int64_t shard_multiple);

}  // namespace mics::model
