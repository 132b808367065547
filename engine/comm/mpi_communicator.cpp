// Communicator over MPI's nonblocking collectives. Groups are split from MPI_COMM_WORLD;
// the strided gather uses a vector datatype so chunks land where they belong with no copy.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/comm/communicator.h"

namespace mics {


namespace {

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw std::runtime_error(std::string(what) + " failed on rank " + std::to_string(rank) + ": " +
                           std::string(text, static_cast<size_t>(len)));
}

// Seconds any wait on another rank may take before this rank gives up (set once at start).
double g_timeout_s = 600.0;

// Waits for `request` by polling, yielding the core between polls (ranks may share cores),
// and throws once comm_timeout_s has passed: a rank that stalls must not hang the others.
void wait_for(MPI_Request& request, const std::string& what) {
  int done = 0;
  check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
  const auto start = std::chrono::steady_clock::now();
  for (long polls = 0; !done; ++polls) {
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    else std::this_thread::yield();
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > g_timeout_s) {
      int rank = -1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      throw std::runtime_error(what + " did not complete within 'runtime.comm_timeout_s' (" +
                               std::to_string(static_cast<int>(g_timeout_s)) + " s) on rank " +
                               std::to_string(rank) + ": a peer stopped answering");
    }
  }
}

struct MpiRequest final : CommRequest {
  MPI_Request handle = MPI_REQUEST_NULL;
  MPI_Datatype owned_type = MPI_DATATYPE_NULL;  // freed once the operation completes
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const std::vector<int>& members, GroupKind kind, int ranks_per_node,
                  CommStats& stats)
      : kind_(kind), stats_(stats) {
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    const auto me = std::find(members.begin(), members.end(), world_rank);
    if (me == members.end()) throw std::logic_error("communicator built by a non-member");
    rank_ = static_cast<int>(me - members.begin());
    size_ = static_cast<int>(members.size());
    // Color: the group's first member identifies the group; key: the order in the group.
    check(MPI_Comm_split(MPI_COMM_WORLD, members.front(), rank_, &comm_), "MPI_Comm_split");
    const int next = members[static_cast<size_t>((rank_ + 1) % size_)];
    const int prev = members[static_cast<size_t>((rank_ + size_ - 1) % size_)];
    const int node = world_rank / ranks_per_node;
    describe_ = std::string(name(kind)) + " group of ranks " + std::to_string(members.front()) + ".." +
                std::to_string(members.back()) + (members.size() > 2 && members[1] - members[0] > 1
                                                      ? " step " + std::to_string(members[1] - members[0])
                                                      : "");
    send_tier_ = next / ranks_per_node == node ? LinkTier::intra_node : LinkTier::inter_node;
    recv_tier_ = prev / ranks_per_node == node ? LinkTier::intra_node : LinkTier::inter_node;
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Request all_gather(float* base, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    auto req = std::make_unique<MpiRequest>();
    if (size_ == 1) return req;
    MPI_Datatype vec;
    check(MPI_Type_vector(static_cast<int>(blocks), static_cast<int>(count),
                          static_cast<int>(block_stride), MPI_FLOAT, &vec), "MPI_Type_vector");
    check(MPI_Type_create_resized(vec, 0, static_cast<MPI_Aint>(member_stride * sizeof(float)),
                                  &req->owned_type), "MPI_Type_create_resized");
    MPI_Type_free(&vec);
    check(MPI_Type_commit(&req->owned_type), "MPI_Type_commit");
    check(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, 1, req->owned_type, comm_,
                         &req->handle), "MPI_Iallgather");
    charge(CollectiveOp::all_gather, static_cast<double>(size_ - 1) * static_cast<double>(blocks * count * sizeof(float)));
    return req;
  }

  Request reduce_scatter(const float* send, float* recv, size_t count) override {
    auto req = std::make_unique<MpiRequest>();
    if (size_ == 1) {
      std::copy(send, send + count, recv);
      return req;
    }
    check(MPI_Ireduce_scatter_block(send, recv, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_,
                                    &req->handle), "MPI_Ireduce_scatter_block");
    charge(CollectiveOp::reduce_scatter, static_cast<double>(size_ - 1) * static_cast<double>(count * sizeof(float)));
    return req;
  }

  Request all_reduce(float* data, size_t count) override {
    auto req = std::make_unique<MpiRequest>();
    if (size_ == 1) return req;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_,
                         &req->handle), "MPI_Iallreduce");
    // Ring all-reduce = reduce-scatter + all-gather: 2(m-1)/m of the message.
    charge(CollectiveOp::all_reduce, 2.0 * static_cast<double>(size_ - 1) * static_cast<double>(count * sizeof(float)) /
           static_cast<double>(size_));
    return req;
  }

  void wait(Request& request) override {
    auto* req = static_cast<MpiRequest*>(request.get());
    if (req == nullptr) return;
    const auto start = std::chrono::steady_clock::now();
    wait_for(req->handle, "a collective on the " + describe_);
    stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (req->owned_type != MPI_DATATYPE_NULL) MPI_Type_free(&req->owned_type);
    request.reset();
  }

  bool test(Request& request) override {
    auto* req = static_cast<MpiRequest*>(request.get());
    if (req == nullptr) return true;
    int done = 0;
    check(MPI_Test(&req->handle, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done) return false;
    if (req->owned_type != MPI_DATATYPE_NULL) MPI_Type_free(&req->owned_type);
    request.reset();
    return true;
  }

  double sum_scalar(double value) override {
    if (size_ > 1) {
      MPI_Request r;
      check(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, comm_, &r), "MPI_Iallreduce");
      wait_for(r, "a sum on the " + describe_);
    }
    return value;
  }

 private:
  void charge(CollectiveOp op, double bytes) {
    const int k = static_cast<int>(kind_), o = static_cast<int>(op);
    stats_.sent[k][o][static_cast<int>(send_tier_)] += bytes;
    stats_.received[k][o][static_cast<int>(recv_tier_)] += bytes;
  }

  GroupKind kind_;
  CommStats& stats_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  LinkTier send_tier_ = LinkTier::intra_node, recv_tier_ = LinkTier::intra_node;
  std::string describe_;  // for messages: "partition group of ranks 4..7"
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const std::vector<int>& members,
                                                    GroupKind kind, int ranks_per_node,
                                                    CommStats& stats) {
  return std::make_unique<MpiCommunicator>(members, kind, ranks_per_node, stats);
}

void world_sum(double* values, int count) {
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  wait_for(r, "a sum over all ranks");
}

void world_barrier() {
  MPI_Request r;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
  wait_for(r, "a barrier of all ranks");
}

void set_comm_timeout(double seconds) { g_timeout_s = seconds; }

bool world_all(bool ok) {
  int value = ok ? 1 : 0;
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  wait_for(r, "an agreement of all ranks");
  return value == 1;
}

}  // namespace mics
