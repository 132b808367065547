#include "engine/flops.h"

namespace mics {

double model_flops_per_sample(const model::ModelSpec& s, int64_t seq) {
  const double S = static_cast<double>(seq), H = static_cast<double>(s.hidden);
  const double F = static_cast<double>(s.ffn), L = static_cast<double>(s.layers);
  const double V = static_cast<double>(s.vocab);
  const double per_layer = 24.0 * S * H * H + 12.0 * S * H * F + 12.0 * S * S * H;
  return L * per_layer + 6.0 * S * H * V;
}

}  // namespace mics
