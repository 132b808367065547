#include "engine/sim/timeline.h"

namespace mics::sim {

double Timeline::sum(const double (&a)[3][2], int op, int tier) {
  double total = 0;
  for (int o = 0; o < 3; ++o)
    for (int t = 0; t < 2; ++t)
      if ((op < 0 || op == o) && (tier < 0 || tier == t)) total += a[o][t];
  return total;
}

Timeline Timeline::minus(const Timeline& e) const {
  Timeline d = *this;
  d.compute_s -= e.compute_s;
  for (int t = 0; t < 2; ++t) d.lane_free_s[t] -= e.lane_free_s[t];
  d.gemm_s -= e.gemm_s;
  d.elementwise_s -= e.elementwise_s;
  d.optimizer_s -= e.optimizer_s;
  for (int o = 0; o < 3; ++o)
    for (int t = 0; t < 2; ++t) {
      d.comm_s[o][t] -= e.comm_s[o][t];
      d.exposed_s[o][t] -= e.exposed_s[o][t];
    }
  return d;
}

}  // namespace mics::sim
