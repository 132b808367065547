#include "model/transformer_block.h"

#include "kernels/counter_hash.h"

namespace mics::model {

namespace {
constexpr const char* kNames[12] = {"qkv.weight",  "qkv.bias",   "proj.weight", "proj.bias",
                                    "norm1.weight", "norm1.bias", "fc.weight",   "fc.bias",
                                    "fc2.weight",  "fc2.bias",   "norm2.weight", "norm2.bias"};

enum Site : uint64_t { kAttentionProbs = 1, kAttentionOut = 2, kFfnOut = 3 };
}  // namespace

void add_block_params(ParamLayout::Builder& b, const std::string& prefix, const BlockShape& s,
                      double init_std, double proj_std) {
  const int64_t C = s.hidden, F = s.ffn;
  b.add(prefix + kNames[0], {3 * C, C}, true, Init::normal, init_std);
  b.add(prefix + kNames[1], {3 * C}, false, Init::zeros);
  b.add(prefix + kNames[2], {C, C}, true, Init::normal, proj_std);
  b.add(prefix + kNames[3], {C}, false, Init::zeros);
  b.add(prefix + kNames[4], {C}, false, Init::ones);
  b.add(prefix + kNames[5], {C}, false, Init::zeros);
  b.add(prefix + kNames[6], {F, C}, true, Init::normal, init_std);
  b.add(prefix + kNames[7], {F}, false, Init::zeros);
  b.add(prefix + kNames[8], {C, F}, true, Init::normal, proj_std);
  b.add(prefix + kNames[9], {C}, false, Init::zeros);
  b.add(prefix + kNames[10], {C}, false, Init::ones);
  b.add(prefix + kNames[11], {C}, false, Init::zeros);
}

BlockBinding::BlockBinding(const ParamLayout& layout, int layer, const std::string& prefix) {
  for (int i = 0; i < 12; ++i) {
    const ParamTensor& t = layout.at(prefix + kNames[i]);
    if (t.layer != layer) throw std::logic_error("block tensor " + t.name + " outside its layer");
    refs_[i] = Ref{t.offset_in_layer, t.shape};
  }
}

BlockTensors BlockBinding::bind(Tensor span) const {
  auto at = [&](int i) { return span.slice(refs_[i].offset, refs_[i].shape); };
  return BlockTensors{at(0), at(1), at(2), at(3), at(4), at(5),
                      at(6), at(7), at(8), at(9), at(10), at(11)};
}

void BlockActivations::allocate(Arena& arena, DType dtype, int64_t B, int64_t T,
                                const BlockShape& s) {
  const int64_t M = B * T, C = s.hidden;
  norm1 = arena.take(dtype, {M, C});
  mean1 = arena.take(dtype, {M});
  rstd1 = arena.take(dtype, {M});
  qkv = arena.take(dtype, {B, T, 3 * C});
  if (s.fused_attention)
    lse = arena.take(dtype == DType::f64 ? DType::f64 : DType::f32, {B, s.heads, T});
  else
    probs = arena.take(dtype, {B, s.heads, T, T});
  attn = arena.take(dtype, {M, C});
  mid = arena.take(dtype, {M, C});
  norm2_io = arena.take(dtype, {M, C});
  mean2 = arena.take(dtype, {M});
  rstd2 = arena.take(dtype, {M});
  ffn_pre = arena.take(dtype, {M, s.ffn});
  ffn_act = arena.take(dtype, {M, s.ffn});
}

void BlockWorkspace::allocate(Arena& arena, DType dtype, int64_t B, int64_t T,
                              const BlockShape& s) {
  const int64_t M = B * T, C = s.hidden;
  branch = arena.take(dtype, {M, C});
  grad_a = arena.take(dtype, {M, C});
  grad_b = arena.take(dtype, {M, C});
  grad_c = arena.take(dtype, {M, C});
  grad_ffn = arena.take(dtype, {M, s.ffn});
  grad_qkv = arena.take(dtype, {B, T, 3 * C});
  if (!s.fused_attention) grad_scores = arena.take(dtype, {B, s.heads, T, T});
}

TransformerBlock::TransformerBlock(Backend& backend, BlockShape shape, int64_t batch, int64_t seq)
    : be_(backend), s_(shape) {
  dims_ = AttentionDims{batch, seq, shape.heads, shape.hidden / shape.heads, shape.causal};
}

DropoutSpec TransformerBlock::site(uint64_t seed, uint64_t which, float prob) const {
  return DropoutSpec{prob, mix_seed(seed, which)};
}

void TransformerBlock::forward(const BlockTensors& w, BlockActivations& a, BlockWorkspace& ws,
                               Tensor in, Tensor out, uint64_t seed) const {
  recompute(w, a, ws, in, seed);
  const DropoutSpec ffn_drop = site(seed, kFfnOut, s_.dropout);
  be_.linear_forward(ws.branch, a.ffn_act, w.fc2_w, w.fc2_b);
  if (ffn_drop.enabled()) be_.dropout_forward(ws.branch, ws.branch, ffn_drop);
  if (s_.pre_norm) {
    be_.add(out, a.mid, ws.branch);
  } else {
    be_.add_layernorm_forward(a.norm2_io, out, a.mean2, a.rstd2, a.norm1, ws.branch, w.norm2_g, w.norm2_b,
                              static_cast<float>(s_.eps));
  }
}

void TransformerBlock::recompute(const BlockTensors& w, BlockActivations& a, BlockWorkspace& ws, Tensor in,
                                 uint64_t seed) const {
  const DropoutSpec attn_drop = site(seed, kAttentionProbs, s_.attention_dropout);
  const DropoutSpec out_drop = site(seed, kAttentionOut, s_.dropout);
  const float eps = static_cast<float>(s_.eps);
  Tensor qkv_rows = a.qkv.reshaped({in.shape[0], 3 * s_.hidden});
  Tensor attn3 = a.attn.reshaped({dims_.batch, dims_.seq, s_.hidden});

  if (s_.pre_norm) {
    be_.layernorm_forward(a.norm1, a.mean1, a.rstd1, in, w.norm1_g, w.norm1_b, eps);
    be_.linear_forward(qkv_rows, a.norm1, w.qkv_w, w.qkv_b);
  } else {
    be_.linear_forward(qkv_rows, in, w.qkv_w, w.qkv_b);
  }
  if (s_.fused_attention)
    be_.attention_forward_fused(attn3, a.lse, a.qkv, IntTensor{}, dims_, attn_drop);
  else
    be_.attention_forward(attn3, a.probs, a.qkv, IntTensor{}, dims_, attn_drop);
  be_.linear_forward(ws.branch, a.attn, w.proj_w, w.proj_b);
  if (out_drop.enabled()) be_.dropout_forward(ws.branch, ws.branch, out_drop);
  // mid = in + branch, and the LayerNorm that reads it, in one pass.
  Tensor ffn_in;
  if (s_.pre_norm) {
    be_.add_layernorm_forward(a.mid, a.norm2_io, a.mean2, a.rstd2, in, ws.branch, w.norm2_g, w.norm2_b, eps);
    ffn_in = a.norm2_io;
  } else {
    be_.add_layernorm_forward(a.mid, a.norm1, a.mean1, a.rstd1, in, ws.branch, w.norm1_g, w.norm1_b, eps);
    ffn_in = a.norm1;
  }
  be_.linear_gelu_forward(a.ffn_act, a.ffn_pre, ffn_in, w.fc_w, w.fc_b, s_.gelu);
}

void TransformerBlock::backward(const BlockTensors& w, const BlockTensors& g,
                                const BlockActivations& a, BlockWorkspace& ws, Tensor in,
                                Tensor d_io, uint64_t seed, Accumulate acc_params) const {
  const DropoutSpec attn_drop = site(seed, kAttentionProbs, s_.attention_dropout);
  const DropoutSpec out_drop = site(seed, kAttentionOut, s_.dropout);
  const DropoutSpec ffn_drop = site(seed, kFfnOut, s_.dropout);
  const int64_t M = in.shape[0];
  Tensor grad_qkv_rows = ws.grad_qkv.reshaped({M, 3 * s_.hidden});
  Tensor grad_c3 = ws.grad_c.reshaped({dims_.batch, dims_.seq, s_.hidden});

  // Dropout's backward, skipped (aliasing its input) when the site is off.
  auto undo_dropout = [&](Tensor grad, DropoutSpec spec) {
    if (!spec.enabled()) return grad;
    be_.dropout_backward(ws.grad_b, grad, spec);
    return ws.grad_b;
  };
  // FFN branch: d_branch -> d(ffn input) written (=) or added (+=) into d_ffn_in.
  auto ffn_backward = [&](Tensor d_branch, Tensor ffn_in, Tensor d_ffn_in, Accumulate acc) {
    const Tensor d_g = undo_dropout(d_branch, ffn_drop);
    be_.linear_gelu_backward(ws.grad_ffn, g.fc2_w, g.fc2_b, d_g, a.ffn_act, a.ffn_pre, w.fc2_w, s_.gelu, acc_params);
    be_.linear_backward(d_ffn_in, g.fc_w, g.fc_b, ws.grad_ffn, ffn_in, w.fc_w, acc, acc_params);
  };
  // Attention branch: d_branch -> d(attention input) written (=) or added (+=).
  auto attention_backward = [&](Tensor d_branch, Tensor attn_in, Tensor d_attn_in,
                                Accumulate acc) {
    const Tensor d_o = undo_dropout(d_branch, out_drop);
    be_.linear_backward(ws.grad_c, g.proj_w, g.proj_b, d_o, a.attn, w.proj_w, Accumulate::no, acc_params);
    if (s_.fused_attention)
      be_.attention_backward_fused(ws.grad_qkv, grad_c3, a.qkv, a.attn.reshaped(grad_c3.shape), a.lse,
                                   IntTensor{}, dims_, attn_drop);
    else
      be_.attention_backward(ws.grad_qkv, ws.grad_scores, grad_c3, a.qkv, a.probs, dims_, attn_drop);
    be_.linear_backward(d_attn_in, g.qkv_w, g.qkv_b, grad_qkv_rows, attn_in, w.qkv_w, acc, acc_params);
  };

  if (s_.pre_norm) {
    // out = mid + ffn(LN2(mid)); mid = in + attn(LN1(in)).
    ffn_backward(d_io, a.norm2_io, ws.grad_a, Accumulate::no);
    be_.layernorm_backward(d_io, g.norm2_g, g.norm2_b, ws.grad_a, a.mid, w.norm2_g, a.mean2,
                           a.rstd2, Accumulate::yes, acc_params);
    attention_backward(d_io, a.norm1, ws.grad_a, Accumulate::no);
    be_.layernorm_backward(d_io, g.norm1_g, g.norm1_b, ws.grad_a, in, w.norm1_g, a.mean1,
                           a.rstd1, Accumulate::yes, acc_params);
  } else {
    // out = LN2(norm1 + ffn(norm1)); norm1 = LN1(in + attn(in)).
    be_.layernorm_backward(ws.grad_a, g.norm2_g, g.norm2_b, d_io, a.norm2_io, w.norm2_g, a.mean2,
                           a.rstd2, Accumulate::no, acc_params);
    ffn_backward(ws.grad_a, a.norm1, ws.grad_a, Accumulate::yes);
    be_.layernorm_backward(d_io, g.norm1_g, g.norm1_b, ws.grad_a, a.mid, w.norm1_g, a.mean1,
                           a.rstd1, Accumulate::no, acc_params);
    attention_backward(d_io, in, d_io, Accumulate::yes);
  }
}

}  // namespace mics::model
