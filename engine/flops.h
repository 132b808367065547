#pragma once
// Model FLOPs (Megatron's count, no recompute): per sample of S tokens, per layer
// 24*S*H^2 (attention projections) + 12*S*H*F (FFN) + 12*S^2*H (scores and weighted sum),
// plus the head: GPT's vocabulary projection on every position, 6*S*H*V (with F = 4H,
// REFERENCES.md's 72*S*L*H^2*(1 + S/(6H)) + 6*S*H*V); BERT's MLM head (transform H x H
// and decoder H x V) on the expected masked positions n = S*p + (1-p)^S, 6*n*H*(H + V).
#include "model/model_spec.h"

namespace mics {

double model_flops_per_sample(const model::ModelSpec& spec, int64_t seq, double mask_prob);

}  // namespace mics
