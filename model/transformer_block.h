#pragma once
// One transformer block, shared by BERT (post-LN, bidirectional, erf GELU) and GPT
// (pre-LN, causal, tanh GELU). Forward saves what backward needs; backward follows the
// gradient rule of kernels/ops.h.
#include <cstdint>
#include <string>

#include "kernels/ops.h"
#include "model/arena.h"
#include "model/param_layout.h"

namespace mics::model {

struct BlockShape {
  int64_t hidden = 0;  // C
  int64_t heads = 0;   // H
  int64_t ffn = 0;     // F
  bool pre_norm = false;
  bool causal = false;
  GeluKind gelu = GeluKind::erf;
  double eps = 1e-12;
  float dropout = 0.0f;
  float attention_dropout = 0.0f;
  bool recompute = false;  // activation checkpointing: see BlockStack
  bool fused_attention = false;  // see ModelSpec::fused_attention
  bool keep_ffn_output = false;  // with recompute, post-LN: see ModelSpec::keep_ffn_output
};

// Registers one block's tensors as the current layer of `builder`, names prefixed.
// `proj_std` initialises the two projections that write into the residual stream.
void add_block_params(ParamLayout::Builder& builder, const std::string& prefix,
                      const BlockShape& shape, double init_std, double proj_std);

// A block's tensors, as views into its layer span (parameters or gradients).
struct BlockTensors {
  Tensor qkv_w, qkv_b;      // [3C, C], [3C]
  Tensor proj_w, proj_b;    // [C, C], [C]
  Tensor norm1_g, norm1_b;  // [C]
  Tensor fc_w, fc_b;        // [F, C], [F]
  Tensor fc2_w, fc2_b;      // [C, F], [C]
  Tensor norm2_g, norm2_b;  // [C]
};

// Offsets of a block's tensors inside its span: the same for every block.
class BlockBinding {
 public:
  BlockBinding() = default;
  BlockBinding(const ParamLayout& layout, int layer, const std::string& prefix);
  BlockTensors bind(Tensor span) const;

 private:
  struct Ref {
    int64_t offset = 0;
    Shape shape;
  };
  Ref refs_[12];
};

// Saved activations of one block for micro-batch rows M = B*T.
struct BlockActivations {
  Tensor norm1, mean1, rstd1;  // pre-LN: LN1(in); post-LN: LN1(in + attn)
  Tensor qkv;                  // [B, T, 3C]
  Tensor probs;                // [B, H, T, T] (materialised attention)
  Tensor lse;                  // [B, H, T] fp32 (fp64 for fp64 models) (fused attention)
  Tensor attn;                 // [M, C] attention output before the projection
  Tensor mid;                  // [M, C] pre-LN: in + attn branch; post-LN: LN1's input
  Tensor norm2_io;             // pre-LN: LN2(mid); post-LN: LN2's input
  Tensor mean2, rstd2;         // [M]
  Tensor ffn_pre, ffn_act;     // [M, F]
  void allocate(Arena& arena, DType dtype, int64_t batch, int64_t seq, const BlockShape& s);
};

// Workspace shared by all blocks (only one runs at a time).
struct BlockWorkspace {
  Tensor branch;       // [M, C]
  Tensor grad_a, grad_b, grad_c;  // [M, C]
  Tensor grad_ffn;     // [M, F]
  Tensor grad_qkv;     // [B, T, 3C]
  Tensor grad_scores;  // [B, H, T, T] (materialised attention only)
  void allocate(Arena& arena, DType dtype, int64_t batch, int64_t seq, const BlockShape& s);
};

class TransformerBlock {
 public:
  TransformerBlock(Backend& backend, BlockShape shape, int64_t batch, int64_t seq);

  // out[M,C] from in[M,C]; out must not alias in.
  void forward(const BlockTensors& w, BlockActivations& act, BlockWorkspace& ws, Tensor in,
               Tensor out, uint64_t seed) const;
  // The forward up to the FFN's GELU, from the block's input: what activation checkpointing
  // recomputes before backward. The rest of the forward (the FFN's second product, its
  // dropout, the residual add and, post-LN, the LayerNorm after it) writes nothing backward
  // reads but, post-LN, LN2's input and statistics, which the caller must then have kept
  // (act.norm2_io, mean2, rstd2 as forward left them; BlockShape::keep_ffn_output): the
  // FFN's second product, a third of the block's linear FLOPs, is not run again.
  void recompute(const BlockTensors& w, BlockActivations& act, BlockWorkspace& ws, Tensor in,
                 uint64_t seed) const;
  // d_io: on entry dLoss/d_out, on exit dLoss/d_in (ws.grad_a is used as well, so d_io
  // must be one of the caller's buffers, not a workspace tensor). Each parameter's gradient
  // is written once, by one op: added into g, or with acc_params no written over it.
  void backward(const BlockTensors& w, const BlockTensors& g, const BlockActivations& act,
                BlockWorkspace& ws, Tensor in, Tensor d_io, uint64_t seed,
                Accumulate acc_params = Accumulate::yes) const;

 private:
  DropoutSpec site(uint64_t seed, uint64_t which, float prob) const;

  Backend& be_;
  BlockShape s_;
  AttentionDims dims_;
};

}  // namespace mics::model
