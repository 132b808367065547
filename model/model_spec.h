#pragma once
// The shape of a model, independent of how it is configured or where it runs.
#include <cstdint>

namespace mics::model {

enum class Arch : uint8_t { bert, gpt };

struct ModelSpec {
  Arch arch = Arch::gpt;
  int64_t hidden = 0;         // C
  int64_t layers = 0;         // L
  int64_t heads = 0;          // H, divides C
  int64_t ffn = 0;            // F, usually 4C
  int64_t vocab = 0;          // V
  int64_t max_positions = 0;  // learned position table rows
  int64_t type_vocab = 0;     // BERT token types (2); 0 for GPT
  double layernorm_eps = 1e-5;
  float dropout = 0.0f;            // embeddings and residual branches
  float attention_dropout = 0.0f;  // attention probabilities
  double init_std = 0.02;
  // How it runs, not its shape: keep only each block's input and recompute the block's
  // activations in backward (one block's worth of memory instead of L).
  bool activation_checkpointing = false;
  // With activation_checkpointing, post-LN (BERT): also keep each block's second LayerNorm
  // input and statistics (one more [B*T, C] per block), so that the recompute stops before
  // the FFN's second product (TransformerBlock::recompute). Pre-LN blocks never need it.
  bool keep_ffn_output = false;
  // Fused attention: keep each query row's log-sum-exp instead of the B x H x T x T
  // probabilities, and recompute them in backward (Backend::attention_*_fused).
  bool fused_attention = false;
};

}  // namespace mics::model
