#include "engine/loss_scaler.h"

#include <algorithm>

namespace mics {

double LossScaler::update(bool overflow) {
  const double used = scale_;
  if (!enabled_) return used;
  if (overflow) {
    scale_ = std::max(options_.minimum, scale_ / 2.0);
    good_steps_ = 0;
  } else if (++good_steps_ >= options_.growth_interval) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
  return used;
}

void LossScaler::restore(const State& s) {
  if (!enabled_ || s.scale <= 0) return;
  scale_ = std::max(options_.minimum, s.scale);
  good_steps_ = s.good_steps;
}

}  // namespace mics
