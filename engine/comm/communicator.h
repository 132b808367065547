#pragma once
// Collectives over one process group, nonblocking: a call starts the operation and
// returns a handle; the buffers may be read or reused only after wait() on it. Every
// collective is charged to the rank's CommStats under its group kind and link tier.
// Implementations: MPI (mpi_communicator.cpp), NCCL (nccl_communicator.cpp), device
// buffers staged through host memory over MPI (staged_communicator.cpp), the simulator
// (sim/sim_communicator.cpp).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace mics {

enum class GroupKind : uint8_t { partition = 0, replication = 1 };
enum class CollectiveOp : uint8_t { all_gather = 0, reduce_scatter = 1, all_reduce = 2 };
enum class LinkTier : uint8_t { intra_node = 0, inter_node = 1 };
const char* name(GroupKind kind);
const char* name(CollectiveOp op);
const char* name(LinkTier tier);

// Bytes each rank moved, by group kind and link tier, and the time it waited on
// communication. Bytes follow the ring algorithm: in a collective over m ranks of a full
// message M, a rank sends (m-1)/m*M (all-gather, reduce-scatter) or 2(m-1)/m*M
// (all-reduce) to its ring successor and receives as much from its predecessor; the tier
// is that neighbour's node against this rank's.
struct CommStats {
  double sent[2][3][2] = {};  // [GroupKind][CollectiveOp][LinkTier]
  double received[2][3][2] = {};
  double wait_s = 0;

  // Bytes sent + received, summed over the dimensions left at -1.
  double bytes(int kind = -1, int op = -1, int tier = -1) const;
  double bytes(LinkTier tier) const { return bytes(-1, -1, static_cast<int>(tier)); }
  double bytes(GroupKind kind) const { return bytes(static_cast<int>(kind)); }
  double bytes(CollectiveOp op) const { return bytes(-1, static_cast<int>(op)); }
  CommStats minus(const CommStats& earlier) const;
  CommStats scaled(double factor) const;
};

// How one rank's collectives in a group are charged: ring neighbours' link tiers.
struct RingAccount {
  GroupKind kind = GroupKind::partition;
  LinkTier send = LinkTier::intra_node;  // to the ring successor
  LinkTier recv = LinkTier::intra_node;  // from the ring predecessor
  RingAccount() = default;
  // `members` in ring order, `world_rank` among them; nodes are world_rank / ranks_per_node.
  RingAccount(const std::vector<int>& members, int world_rank, int ranks_per_node, GroupKind kind);
  // `bytes` sent to the successor and as many received from the predecessor.
  void charge(CommStats& stats, CollectiveOp op, double bytes) const;
};

class CommRequest {
 public:
  virtual ~CommRequest() = default;
};
using Request = std::unique_ptr<CommRequest>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;  // index in the group
  virtual int size() const = 0;

  // Buffers live where the communicator's ranks compute (host memory for MPI, device memory
  // for NCCL and the staged communicator); counts and strides are in elements of `dtype`.
  //
  // In place over `base`: member j owns `blocks` chunks of `count` elements at
  // base + j*member_stride + b*block_stride (b < blocks); afterwards every member holds
  // every member's chunks. Flat gather: blocks = 1, member_stride = count.
  virtual Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                             size_t block_stride) = 0;
  // Whether a collective that reads another's result can be started before that one has
  // completed, the dependency kept where the data lives (NCCL and the simulator: stream
  // order on the device). Then every rank submits its collectives in program order, which
  // NCCL asks of communicators used at the same time; on host-ordered communicators (MPI,
  // staged) the dependent one starts only once test() or wait() saw the first complete.
  virtual bool orders_on_device() const { return false; }
  // all_gather that begins only once `before` has completed: a request of another
  // communicator of this backend, consumed here (afterwards null), or null.
  virtual Request all_gather_after(Request& before, void* base, DType dtype, size_t count, size_t blocks,
                                   size_t member_stride, size_t block_stride) {
    if (before) throw std::logic_error("all_gather_after on a host-ordered communicator before its dependency completed");
    return all_gather(base, dtype, count, blocks, member_stride, block_stride);
  }
  // send[size()*count] summed over members; member j receives block j into recv[count].
  virtual Request reduce_scatter(const void* send, void* recv, DType dtype, size_t count) = 0;
  // data[count] summed over members, in place.
  virtual Request all_reduce(void* data, DType dtype, size_t count) = 0;

  // fp32 conveniences.
  Request all_gather(float* base, size_t count, size_t blocks, size_t member_stride, size_t block_stride) {
    return all_gather(base, DType::f32, count, blocks, member_stride, block_stride);
  }
  Request reduce_scatter(const float* send, float* recv, size_t count) {
    return reduce_scatter(send, recv, DType::f32, count);
  }
  Request all_reduce(float* data, size_t count) { return all_reduce(data, DType::f32, count); }
  // Blocks until `request` completes (null requests return at once); charged to wait_s.
  virtual void wait(Request& request) = 0;
  // True when `request` has completed (then it is released); never blocks.
  virtual bool test(Request& request) = 0;
  // Sum of one double over the group, blocking; scalars are not charged to the counters.
  virtual double sum_scalar(double value) = 0;
  // The group's first member's `value`, on every member, blocking (uncharged): what the
  // members read or resolve alone is compared against it (engine/comm/rank_agreement.h).
  virtual uint64_t first_member_value(uint64_t value) = 0;
};

// Builds the communicator of `members` (world ranks, in group order) from the world;
// every rank of the world must call it with its own group's members (collective).
// `ranks_per_node` maps a world rank to its node for the tier accounting.
std::unique_ptr<Communicator> make_mpi_communicator(const std::vector<int>& members,
                                                    GroupKind kind, int ranks_per_node,
                                                    CommStats& stats);

// Sum of a few doubles over every rank (losses, norms); not charged to the counters.
void world_sum(double* values, int count);
// Every rank of the job reaches this point before any leaves it.
void world_barrier();
// `bytes` of `data` on `root` copied to every rank.
void world_broadcast(void* data, int bytes, int root);
// Polls `done` until it returns true, as every wait on other ranks does: yielding the core
// between polls (ranks may share cores), answering the other ranks' liveness pings, and past
// runtime.comm_timeout_s throwing "`what` did not complete within ...", naming the ranks of
// `members` (world ranks; empty: all) that stopped answering or, when every rank answers,
// `if_all_answer` (null: "the ranks disagree on which collective comes next"). Once a wait
// on this rank has given up, every later one throws at once: the job is ending.
void wait_until(const std::function<bool()>& done, const std::string& what, const std::vector<int>& members,
                const char* if_all_answer = nullptr);
// How long any wait on other ranks may take before it throws (runtime.comm_timeout_s).
void set_comm_timeout(double seconds);
double comm_timeout();
// True on every rank when `ok` is true on every rank (agreement before a commit step).
bool world_all(bool ok);

}  // namespace mics
