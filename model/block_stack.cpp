#include "model/block_stack.h"

#include <string>

#include "model/model.h"

namespace mics::model {

void check_batch_shape(const char* arch, const TokenBatch& b, int64_t micro_batch, int64_t seq) {
  if (b.batch != micro_batch || b.seq != seq)
    throw ShapeError(std::string(arch) + " built for micro-batch " + std::to_string(micro_batch) +
                     " x " + std::to_string(seq) + " got " + std::to_string(b.batch) + " x " +
                     std::to_string(b.seq));
}

BlockStack::BlockStack(Backend& backend, const BlockShape& shape, const ParamLayout& layout,
                       int64_t layers, int64_t batch, int64_t seq, const std::string& prefix)
    : be_(backend), shape_(shape), layers_(layers), batch_(batch), seq_(seq),
      block_(backend, shape, batch, seq),
      binding_(layout, 1, prefix + "0.") {}

void BlockStack::allocate(Arena& arena, DType dtype) {
  const int64_t M = batch_ * seq_;
  residual_.assign(static_cast<size_t>(layers_ + 1), Tensor{});
  for (Tensor& r : residual_) r = arena.take(dtype, {M, shape_.hidden});
  acts_.assign(shape_.recompute ? 1 : static_cast<size_t>(layers_), BlockActivations{});
  for (BlockActivations& a : acts_) a.allocate(arena, dtype, batch_, seq_, shape_);
  kept_norm2_.clear();
  if (shape_.recompute && !shape_.pre_norm && shape_.keep_ffn_output) {
    // The shared set's own LN2 tensors serve block 0.
    kept_norm2_.push_back({acts_[0].norm2_io, acts_[0].mean2, acts_[0].rstd2});
    for (int64_t l = 1; l < layers_; ++l)
      kept_norm2_.push_back({arena.take(dtype, {M, shape_.hidden}), arena.take(dtype, {M}), arena.take(dtype, {M})});
  }
  ws_.allocate(arena, dtype, batch_, seq_, shape_);
  grad_ = arena.take(dtype, {M, shape_.hidden});
}

BlockActivations& BlockStack::acts(int64_t l) {
  if (!shape_.recompute) return acts_[static_cast<size_t>(l)];
  BlockActivations& shared = acts_[0];
  if (!kept_norm2_.empty()) {
    const KeptNorm2& kept = kept_norm2_[static_cast<size_t>(l)];
    shared.norm2_io = kept.input, shared.mean2 = kept.mean, shared.rstd2 = kept.rstd;
  }
  return shared;
}

uint64_t BlockStack::layer_seed(uint64_t seed, int64_t layer) const {
  return mix_seed(seed, static_cast<uint64_t>(layer) + 1);
}

void BlockStack::forward(ParamProvider& params, uint64_t seed) {
  for (int64_t l = 0; l < layers_; ++l) {
    const int layer = static_cast<int>(l + 1);
    const BlockTensors w = binding_.bind(params.acquire_params(layer));
    block_.forward(w, acts(l), ws_, residual_[static_cast<size_t>(l)], residual_[static_cast<size_t>(l + 1)],
                   layer_seed(seed, l));
    params.release_params(layer);
  }
}

void BlockStack::backward(ParamProvider& params, uint64_t seed) {
  for (int64_t l = layers_ - 1; l >= 0; --l) {
    const int layer = static_cast<int>(l + 1);
    const BlockTensors w = binding_.bind(params.acquire_params(layer));
    if (shape_.recompute) {
      const Tensor in = residual_[static_cast<size_t>(l)];
      if (shape_.pre_norm || shape_.keep_ffn_output) {
        block_.recompute(w, acts(l), ws_, in, layer_seed(seed, l));
      } else {
        // Post-LN without its LN2 input kept: the whole forward again, for that input. It
        // rewrites the block's output with the values it already holds; nothing reads it
        // any more in this backward.
        block_.forward(w, acts(l), ws_, in, residual_[static_cast<size_t>(l + 1)], layer_seed(seed, l));
      }
    }
    // Each of the block's parameter gradients is written by one op: into a fresh buffer (=).
    const GradBuffer grads = params.grad_buffer(layer);
    const BlockTensors g = binding_.bind(grads.grads);
    block_.backward(w, g, acts(l), ws_, residual_[static_cast<size_t>(l)], grad_, layer_seed(seed, l),
                    grads.fresh ? Accumulate::no : Accumulate::yes);
    params.release_params(layer);
    params.grads_ready(layer);
  }
}

}  // namespace mics::model
