#include "engine/comm/communicator.h"

namespace mics {

const char* name(GroupKind kind) { return kind == GroupKind::partition ? "partition" : "replication"; }
const char* name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::all_gather: return "all_gather";
    case CollectiveOp::reduce_scatter: return "reduce_scatter";
    case CollectiveOp::all_reduce: return "all_reduce";
  }
  return "?";
}
const char* name(LinkTier tier) { return tier == LinkTier::intra_node ? "intra_node" : "inter_node"; }

double CommStats::bytes(int kind, int op, int tier) const {
  double total = 0;
  for (int k = 0; k < 2; ++k)
    for (int o = 0; o < 3; ++o)
      for (int t = 0; t < 2; ++t)
        if ((kind < 0 || kind == k) && (op < 0 || op == o) && (tier < 0 || tier == t))
          total += sent[k][o][t] + received[k][o][t];
  return total;
}

RingAccount::RingAccount(const std::vector<int>& members, int world_rank, int ranks_per_node, GroupKind kind_)
    : kind(kind_) {
  const size_t m = members.size();
  size_t me = 0;
  while (me < m && members[me] != world_rank) ++me;
  if (me == m) return;
  const int node = world_rank / ranks_per_node;
  send = members[(me + 1) % m] / ranks_per_node == node ? LinkTier::intra_node : LinkTier::inter_node;
  recv = members[(me + m - 1) % m] / ranks_per_node == node ? LinkTier::intra_node : LinkTier::inter_node;
}

void RingAccount::charge(CommStats& stats, CollectiveOp op, double bytes) const {
  const int k = static_cast<int>(kind), o = static_cast<int>(op);
  stats.sent[k][o][static_cast<int>(send)] += bytes;
  stats.received[k][o][static_cast<int>(recv)] += bytes;
}

CommStats CommStats::minus(const CommStats& e) const {
  CommStats d = *this;
  for (int k = 0; k < 2; ++k)
    for (int o = 0; o < 3; ++o)
      for (int t = 0; t < 2; ++t) {
        d.sent[k][o][t] -= e.sent[k][o][t];
        d.received[k][o][t] -= e.received[k][o][t];
      }
  d.wait_s -= e.wait_s;
  return d;
}

CommStats CommStats::scaled(double f) const {
  CommStats d = *this;
  for (int k = 0; k < 2; ++k)
    for (int o = 0; o < 3; ++o)
      for (int t = 0; t < 2; ++t) {
        d.sent[k][o][t] *= f;
        d.received[k][o][t] *= f;
      }
  d.wait_s *= f;
  return d;
}

}  // namespace mics
