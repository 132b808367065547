#include "engine/sim/sim_communicator.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

namespace mics::sim {

namespace {

struct SimRequest final : CommRequest {
  double end_s = 0;
  CollectiveOp op = CollectiveOp::all_gather;
  LinkTier tier = LinkTier::intra_node;
};

class SimCommunicator final : public Communicator {
 public:
  SimCommunicator(const Topology& topo, const std::vector<int>& members, RingShape shape, GroupKind kind,
                  const ClusterSpec& cluster, Timeline& timeline, CommStats& stats)
      : shape_(shape), cluster_(cluster), timeline_(timeline), stats_(stats) {
    const auto me = std::find(members.begin(), members.end(), topo.rank);
    if (me == members.end()) throw std::logic_error("simulated communicator built by a non-member");
    rank_ = static_cast<int>(me - members.begin());
    size_ = static_cast<int>(members.size());
    ring_ = RingAccount(members, topo.rank, topo.ranks_per_node, kind);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    Request none;
    return all_gather_after(none, base, dtype, count, blocks, member_stride, block_stride);
  }
  // Simulated GPUs order collectives on the device, as NCCL does: a dependent gather is
  // booked to begin once the one before it ends, whenever the host submitted it.
  bool orders_on_device() const override { return true; }
  Request all_gather_after(Request& before, void*, DType dtype, size_t count, size_t blocks, size_t,
                           size_t) override {
    const double not_before = before ? static_cast<SimRequest*>(before.get())->end_s : 0.0;
    before.reset();
    const double chunk = static_cast<double>(blocks * count * dtype_size(dtype));
    return start(CollectiveOp::all_gather, chunk * size_, (size_ - 1) * chunk, not_before);
  }
  Request reduce_scatter(const void*, void*, DType dtype, size_t count) override {
    const double chunk = static_cast<double>(count * dtype_size(dtype));
    return start(CollectiveOp::reduce_scatter, chunk * size_, (size_ - 1) * chunk);
  }
  Request all_reduce(void*, DType dtype, size_t count) override {
    const double full = static_cast<double>(count * dtype_size(dtype));
    return start(CollectiveOp::all_reduce, full, 2.0 * (size_ - 1) * full / size_);
  }

  void wait(Request& request) override {
    auto* r = static_cast<SimRequest*>(request.get());
    if (r == nullptr) return;
    const double exposed = std::max(0.0, r->end_s - timeline_.compute_s);
    timeline_.compute_s += exposed;
    timeline_.exposed_s[static_cast<int>(r->op)][static_cast<int>(r->tier)] += exposed;
    stats_.wait_s += exposed;
    request.reset();
  }
  bool test(Request& request) override {
    auto* r = static_cast<SimRequest*>(request.get());
    if (r != nullptr && r->end_s > timeline_.compute_s) return false;
    request.reset();
    return true;
  }
  // Every rank of a simulated group holds the same values.
  double sum_scalar(double value) override { return value * size_; }
  uint64_t first_member_value(uint64_t value) override { return value; }

 private:
  // Charges the counters exactly as the MPI communicator does and books the collective on
  // the communication stream.
  // `not_before`: when the collective it reads the result of ends (0: none).
  Request start(CollectiveOp op, double full_bytes, double ring_bytes, double not_before = 0.0) {
    auto req = std::make_unique<SimRequest>();
    req->end_s = not_before;  // a group of one is done when its dependency is
    if (size_ == 1) return req;
    const int o = static_cast<int>(op);
    ring_.charge(stats_, op, ring_bytes);
    const CollectiveTime t = collective_time(cluster_, shape_, op, full_bytes);
    // A ring that crosses nodes occupies the network; one inside a node only NVLink.
    double& lane = timeline_.lane_free_s[shape_.spans_nodes ? 1 : 0];
    const double begin = std::max({timeline_.compute_s, lane, not_before});
    lane = begin + t.seconds;
    timeline_.comm_s[o][static_cast<int>(t.bottleneck)] += t.seconds;
    req->end_s = lane;
    req->op = op;
    req->tier = t.bottleneck;
    return req;
  }

  RingShape shape_;
  const ClusterSpec& cluster_;
  Timeline& timeline_;
  CommStats& stats_;
  int rank_ = 0, size_ = 1;
  RingAccount ring_;
};

}  // namespace

RingShape ring_shape(const Topology& self, const std::function<std::vector<int>(int)>& members_of) {
  RingShape s;
  const std::vector<int> mine = members_of(self.rank);
  s.size = static_cast<int>(mine.size());
  std::set<int> nodes;
  std::vector<int> per_node(static_cast<size_t>(self.world / self.ranks_per_node), 0);
  for (int r : mine) {
    nodes.insert(self.node_of(r));
    s.max_members_per_node = std::max(s.max_members_per_node, ++per_node[static_cast<size_t>(self.node_of(r))]);
  }
  s.nodes = static_cast<int>(nodes.size());
  s.spans_nodes = s.nodes > 1;
  // Every rank on this node runs its own group's ring at the same time: the ring edges
  // leaving the node, over all of them, share the node's network bandwidth.
  const int node = self.node();
  for (int local = 0; local < self.ranks_per_node; ++local) {
    const int r = node * self.ranks_per_node + local;
    const std::vector<int> group = members_of(r);
    if (group.size() < 2) continue;
    const auto at = std::find(group.begin(), group.end(), r);
    const size_t next = (static_cast<size_t>(at - group.begin()) + 1) % group.size();
    if (self.node_of(group[next]) != node) ++s.flows_per_nic;
  }
  return s;
}

CollectiveTime collective_time(const ClusterSpec& c, const RingShape& s, CollectiveOp op, double bytes) {
  CollectiveTime out;
  if (s.size < 2 || bytes <= 0) return out;
  const double m = s.size;
  const double alpha_intra = c.intra_latency_us * 1e-6, alpha_inter = c.inter_latency_us * 1e-6;
  const double flows = std::max(s.flows_per_nic, 1);
  // Links deliver the collective's measured share of their bandwidth.
  const double efficiency = c.collective_efficiency[static_cast<int>(op)];
  const double intra_bw = c.intra_bytes_per_s() * efficiency, inter_bw = c.inter_bytes_per_s() * efficiency;
  // Ring: m-1 steps (2(m-1) for all-reduce), each moving one chunk over every edge at once;
  // the slowest edge sets the pace.
  const double chunk = bytes / m;
  const double steps = op == CollectiveOp::all_reduce ? 2.0 * (m - 1) : m - 1;
  const double intra_step = alpha_intra + chunk / intra_bw;
  const double inter_step = s.spans_nodes ? alpha_inter + chunk * flows / inter_bw : 0.0;
  out.seconds = steps * std::max(intra_step, inter_step);
  out.bottleneck = inter_step > intra_step ? LinkTier::inter_node : LinkTier::intra_node;
  if (op == CollectiveOp::all_reduce && s.spans_nodes) {
    // NCCL's tree: a pipelined double binary tree over the nodes, chains inside them; each
    // node sends and receives about the whole message in the reduce and again in the
    // broadcast, with logarithmic latency. It wins for small messages over many nodes.
    const double depth = std::ceil(std::log2(static_cast<double>(s.nodes)));
    const double latency = 2.0 * (depth * alpha_inter + (s.max_members_per_node - 1) * alpha_intra);
    const double transfer = 2.0 * std::max(bytes * flows / inter_bw, bytes / intra_bw);
    if (latency + transfer < out.seconds) {
      out.seconds = latency + transfer;
      out.bottleneck = LinkTier::inter_node;
    }
  }
  return out;
}

std::unique_ptr<Communicator> make_sim_communicator(const Topology& topo, const std::vector<int>& members,
                                                    RingShape shape, GroupKind kind, const ClusterSpec& cluster,
                                                    Timeline& timeline, CommStats& stats) {
  return std::make_unique<SimCommunicator>(topo, members, shape, kind, cluster, timeline, stats);
}

}  // namespace mics::sim
