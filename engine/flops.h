#pragma once
// Model FLOPs (Megatron's count, no recompute): per sample of S tokens, per layer
// 24*S*H^2 (attention projections) + 12*S*H*F (FFN) + 12*S^2*H (scores and weighted sum),
// plus the vocabulary projection 6*S*H*V. With F = 4H this is docs/references.md's
// 72*S*L*H^2*(1 + S/(6H)) + 6*S*H*V. BERT's MLM head runs on the masked positions only;
// the count keeps the formula's 6*S*H*V, so TFLOP/s compare with the paper's and docs/references.md's.
#include "model/model_spec.h"

namespace mics {

double model_flops_per_sample(const model::ModelSpec& spec, int64_t seq);

}  // namespace mics
