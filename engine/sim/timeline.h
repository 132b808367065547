#pragma once
// Simulated time of one rank: a compute stream that ops advance, and a communication lane
// per link tier: collectives whose ring crosses nodes run one after another on the
// network lane, collectives inside a node on the NVLink lane, each in issue order (as on
// a dedicated NCCL stream per lane). A collective starts when it is issued, its lane is
// free and any collective whose result it reads has ended; waiting on it moves the
// compute stream to its end, and the gap is the exposed (not hidden) communication.
#include "engine/comm/communicator.h"

namespace mics::sim {

struct Timeline {
  double compute_s = 0;    // how far the compute stream has got
  double lane_free_s[2] = {};  // [LinkTier]: when that lane is next idle

  // Busy time by kind.
  double gemm_s = 0, elementwise_s = 0, optimizer_s = 0;
  double comm_s[3][2] = {};     // [CollectiveOp][LinkTier of the bottleneck]
  double exposed_s[3][2] = {};  // part of comm_s the compute stream waited for

  double comm_total(int op = -1, int tier = -1) const { return sum(comm_s, op, tier); }
  double exposed_total(int op = -1, int tier = -1) const { return sum(exposed_s, op, tier); }
  Timeline minus(const Timeline& earlier) const;

 private:
  static double sum(const double (&a)[3][2], int op, int tier);
};

}  // namespace mics::sim
