#pragma once
// The L transformer blocks between a model's embeddings (layer 0) and head (layer L+1):
// residual-stream buffers, saved activations per block, and the per-layer parameter
// hand-shake with the ParamProvider.
#include <cstdint>
#include <vector>

#include "kernels/counter_hash.h"
#include "model/param_provider.h"
#include "model/transformer_block.h"

namespace mics::model {

class BlockStack {
 public:
  BlockStack(Backend& backend, const BlockShape& shape, const ParamLayout& layout,
             int64_t layers, int64_t batch, int64_t seq, const std::string& prefix);
  // Called twice by the owning model: once with a measuring arena, once for real.
  void allocate(Arena& arena, DType dtype);

  Tensor input() const { return residual_.front(); }   // [M, C], written by the embeddings
  Tensor output() const { return residual_.back(); }   // [M, C], read by the head
  Tensor grad() const { return grad_; }                // [M, C], gradient of output, then input

  // input() -> output(), acquiring and releasing layers 1..L.
  void forward(ParamProvider& params, uint64_t seed);
  // grad(): dLoss/d output() on entry, dLoss/d input() on exit.
  void backward(ParamProvider& params, uint64_t seed);

 private:
  uint64_t layer_seed(uint64_t seed, int64_t layer) const;

  Backend& be_;
  BlockShape shape_;
  int64_t layers_, batch_, seq_;
  TransformerBlock block_;
  BlockBinding binding_;  // identical offsets in every block
  std::vector<Tensor> residual_;  // L + 1 of [M, C]
  std::vector<BlockActivations> acts_;
  BlockWorkspace ws_;
  Tensor grad_;
};

}  // namespace mics::model
