#pragma once
// The L transformer blocks between a model's embeddings (layer 0) and head (layer L+1):
// residual-stream buffers, saved activations per block, and the per-layer parameter
// hand-shake with the ParamProvider. With activation checkpointing (shape.recompute) the
// residual stream is kept per block (and, post-LN with shape.keep_ffn_output, each block's
// second LayerNorm input and statistics); one set of the other activations is shared, and
// backward runs each block's forward again from its saved input before its backward: up to
// the FFN's GELU (TransformerBlock::recompute) pre-LN or with those kept, else whole.
// Recompute is the same ops on the same inputs with the same dropout seeds, so gradients
// are identical.
#include <cstdint>
#include <vector>

#include "kernels/counter_hash.h"
#include "model/param_provider.h"
#include "model/transformer_block.h"

namespace mics::model {

// A parameter's view inside its layer's span (parameters or gradients).
inline Tensor param_view(Tensor layer_span, const ParamTensor& t) {
  return layer_span.slice(t.offset_in_layer, t.shape);
}

// Dropout of the embedding output, keyed by the micro-batch's dropout seed.
inline DropoutSpec embedding_dropout(float prob, uint64_t seed) {
  constexpr uint64_t kEmbeddingSalt = 0xE3B;  // distinct from the layer indices
  return DropoutSpec{prob, mix_seed(seed, kEmbeddingSalt)};
}

struct TokenBatch;
// Models are built for one micro-batch shape; anything else is a caller's bug.
void check_batch_shape(const char* arch, const TokenBatch& batch, int64_t micro_batch,
                       int64_t seq);

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
  std::vector<BlockActivations> acts_;  // L, or 1 shared when recomputing
  // Recomputing post-LN with keep_ffn_output: block l's LN2 input and statistics, kept from
  // its forward.
  struct KeptNorm2 {
    Tensor input, mean, rstd;  // [M, C], [M], [M]
  };
  std::vector<KeptNorm2> kept_norm2_;
  // Block l's activations: its own, or the shared set (with block l's kept LN2 tensors).
  BlockActivations& acts(int64_t l);
  BlockWorkspace ws_;
  Tensor grad_;
};

}  // namespace mics::model
