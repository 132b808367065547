#pragma once
// The communicator of the simulated cluster: no data moves; each collective is charged
// the bytes the MPI communicator would count (same ring accounting, same link tiers) and
// the time of NCCL's algorithms under an alpha-beta model per link tier.
#include <functional>
#include <memory>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/sim/cluster_spec.h"
#include "engine/sim/timeline.h"
#include "engine/topology.h"

namespace mics::sim {

// How one group's collectives use the links: its ring, and how many rings of the same
// family (all groups of this kind run the same collective at once) leave this rank's node.
struct RingShape {
  int size = 1;                 // m
  bool spans_nodes = false;     // some ring edge crosses nodes
  int nodes = 1;                // distinct nodes among the members
  int flows_per_nic = 0;        // inter-node ring edges of the whole family leaving this node
  int max_members_per_node = 1;
};

// Ring of `self`'s group in one family of groups (partition, replication, intra-node or
// inter-node rail); `members_of(r)` gives any rank's group of that family in ring order.
RingShape ring_shape(const Topology& self, const std::function<std::vector<int>(int)>& members_of);

// Seconds one collective over a full message of `bytes` takes on `shape` (ring; for
// all-reduce the faster of ring and NCCL's tree), and the tier that bounds it.
struct CollectiveTime {
  double seconds = 0;
  LinkTier bottleneck = LinkTier::intra_node;
};
CollectiveTime collective_time(const ClusterSpec& cluster, const RingShape& shape, CollectiveOp op,
                               double bytes);

std::unique_ptr<Communicator> make_sim_communicator(const Topology& topo, const std::vector<int>& members,
                                                    RingShape shape, GroupKind kind,
                                                    const ClusterSpec& cluster, Timeline& timeline,
                                                    CommStats& stats);

}  // namespace mics::sim
