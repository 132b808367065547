#include "engine/flops.h"

#include <cmath>

namespace mics {

double model_flops_per_sample(const model::ModelSpec& s, int64_t seq, double mask_prob) {
  const double S = static_cast<double>(seq), H = static_cast<double>(s.hidden);
  const double F = static_cast<double>(s.ffn), L = static_cast<double>(s.layers);
  const double V = static_cast<double>(s.vocab);
  const double per_layer = 24.0 * S * H * H + 12.0 * S * H * F + 12.0 * S * S * H;
  if (s.arch == model::Arch::bert) {
    // The MLM head runs on the masked positions only: S p expected, plus the one
    // position the batcher masks in a sample that drew none ((1 - p)^S of them).
    const double rows = S * mask_prob + std::pow(1.0 - mask_prob, S);
    return L * per_layer + 6.0 * rows * H * (H + V);
  }
  return L * per_layer + 6.0 * S * H * V;
}

}  // namespace mics
