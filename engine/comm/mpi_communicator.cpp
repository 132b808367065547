// Communicator over MPI's nonblocking collectives. Groups are split from MPI_COMM_WORLD;
// the strided gather uses a vector datatype so chunks land where they belong with no copy.
// Every wait polls with a deadline and answers liveness pings, so a timeout names the
// rank that stopped answering.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <set>
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

// Set by the first wait that gave up: the job is ending, and collectives still waited for
// while it unwinds (the parameter store drains its in-flight gathers) fail at once instead
// of each waiting out another timeout and pinging peers that are exiting by then.
bool g_gave_up = false;

// ---- Liveness pings ----------------------------------------------------------------------
// MPI cannot say which member of a collective is missing. So every rank, while it polls a
// wait, also answers pings on a duplicate of the world communicator (its own context, so
// pings never match a collective's messages); a rank whose wait times out pings the peers
// it was waiting for and names those that stay silent. A stalled or dead rank never
// answers; a healthy one is polling a wait of its own within moments, since it soon needs
// the silent rank too.
MPI_Comm g_ping_comm = MPI_COMM_NULL;
// A rank that gives up announces it (kLeavingTag) to every other: it is going down with the
// job, not stalled, and a peer that diagnoses its own timeout after this one has exited
// must not blame it.
constexpr int kPingTag = 1, kPongTag = 2, kLeavingTag = 3;
// Pongs carry 1 when this rank was itself frozen lately (within the last comm_timeout_s):
// mpirun resumes a SIGSTOPped rank (SIGCONT) before killing it, and such a rank must not
// pass for a live one with a late answer. A thread of its own ticks every 100 ms and sees
// a stop as a gap in its ticks, wherever the rank was stopped: in a wait, or in the middle
// of a layer's compute. Static: sends read the value after the call returns.
const int kTokens[2] = {0, 1};
using Clock = std::chrono::steady_clock;
std::atomic<int64_t> g_last_freeze_ns{0};  // steady-clock time a freeze last ended; 0: never
std::set<int> g_leaving;  // world ranks that announced they are leaving

double grace_s();

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void watch_for_freezes() {
  std::thread([] {
    int64_t last = now_ns();
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const int64_t now = now_ns();
      if (1e-9 * static_cast<double>(now - last) > grace_s()) g_last_freeze_ns.store(now, std::memory_order_relaxed);
      last = now;
    }
  }).detach();
}

bool frozen_within(double seconds) {
  const int64_t freeze = g_last_freeze_ns.load(std::memory_order_relaxed);
  return freeze != 0 && 1e-9 * static_cast<double>(now_ns() - freeze) < seconds;
}

// Called on every rank by the first communicator's construction, which is collective.
void ensure_ping_comm() {
  if (g_ping_comm != MPI_COMM_NULL) return;
  check(MPI_Comm_dup(MPI_COMM_WORLD, &g_ping_comm), "MPI_Comm_dup");
  watch_for_freezes();
}

// Long enough for a healthy rank to finish a layer's compute and reach its next poll.
double grace_s() { return std::clamp(g_timeout_s / 10.0, 1.0, 10.0); }

// Fire-and-forget send of a token; a peer that never receives it is what we detect.
void send_token(int to, int tag, int value) {
  MPI_Request r;
  check(MPI_Isend(&kTokens[value], 1, MPI_INT, to, tag, g_ping_comm, &r), "MPI_Isend");
  check(MPI_Request_free(&r), "MPI_Request_free");
}

// Receives one token of `tag` if one has arrived: true, with its sender and value.
bool receive_token(int tag, int& from, int& value) {
  int pending = 0;
  MPI_Status status;
  check(MPI_Iprobe(MPI_ANY_SOURCE, tag, g_ping_comm, &pending, &status), "MPI_Iprobe");
  if (!pending) return false;
  from = status.MPI_SOURCE;
  check(MPI_Recv(&value, 1, MPI_INT, from, tag, g_ping_comm, MPI_STATUS_IGNORE), "MPI_Recv");
  return true;
}

// Records every leaving announcement that has arrived.
void note_leavers() {
  int from = 0, value = 0;
  while (receive_token(kLeavingTag, from, value)) g_leaving.insert(from);
}

// Tells every other rank that this one gave up and is leaving.
void announce_leaving() {
  if (g_ping_comm == MPI_COMM_NULL) return;
  int me = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  for (int r = 0; r < world; ++r)
    if (r != me) send_token(r, kLeavingTag, 0);
}

// Answers every ping that has arrived.
void serve_pings() {
  if (g_ping_comm == MPI_COMM_NULL) return;
  note_leavers();
  int from = 0, value = 0;
  while (receive_token(kPingTag, from, value)) send_token(from, kPongTag, frozen_within(g_timeout_s) ? 1 : 0);
}

// Pings `peers` (world ranks) and returns those that did not answer within `grace_s`,
// answering others' pings meanwhile (they may be asking us the same question).
std::vector<int> silent_peers(const std::vector<int>& peers, double grace_s) {
  int me = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  std::set<int> waiting;
  note_leavers();
  for (int peer : peers)
    if (peer != me && !g_leaving.count(peer) && waiting.insert(peer).second) send_token(peer, kPingTag, 0);
  const auto start = std::chrono::steady_clock::now();
  while (!waiting.empty() &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < grace_s) {
    serve_pings();  // (and notes leavers: a peer that gives up meanwhile is not silent)
    for (int r : g_leaving) waiting.erase(r);
    int from = 0, frozen = 0;
    if (!receive_token(kPongTag, from, frozen)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    if (!frozen) waiting.erase(from);
  }
  return {waiting.begin(), waiting.end()};
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

// Why a wait on `members` (world ranks; empty: the whole world) timed out, by pinging them,
// then, if all of them answer, everyone (the holdup may sit behind one of them); when every
// rank answers, `if_all_answer` (null: the ranks disagree on the next collective).
std::string diagnose_timeout(const std::vector<int>& members, const char* if_all_answer) {
  if (g_ping_comm == MPI_COMM_NULL) return "a peer stopped answering";
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::vector<int> everyone(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) everyone[static_cast<size_t>(r)] = r;
  char grace[32];
  std::snprintf(grace, sizeof grace, "%.0f s", grace_s());
  if (!members.empty() && members.size() < everyone.size()) {
    const std::vector<int> silent = silent_peers(members, grace_s());
    if (!silent.empty())
      return rank_list(silent) + " of this group did not answer a liveness ping within " + grace +
             " (stalled or dead)";
  }
  const std::vector<int> silent = silent_peers(everyone, grace_s());
  if (!silent.empty())
    return (members.empty() || members.size() == everyone.size() ? "" : "every member of this group answered; ") +
           rank_list(silent) + " did not answer a liveness ping within " + grace + " (stalled or dead)";
  return "every rank answered a liveness ping within " + std::string(grace) + ", so none is stalled: " +
         (if_all_answer != nullptr ? if_all_answer : "the ranks disagree on which collective comes next");
}

}  // namespace

void wait_until(const std::function<bool()>& done, const std::string& what, const std::vector<int>& members,
                const char* if_all_answer) {
  if (done()) return;
  if (g_gave_up)
    throw std::runtime_error(what + " was not waited for: an earlier wait on this rank gave up, so the job is ending");
  const auto start = std::chrono::steady_clock::now();
  auto last_poll = start;
  double frozen_s = 0;  // longest gap between polls of this wait
  for (long polls = 0; !done(); ++polls) {
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    else std::this_thread::yield();
    const auto now = std::chrono::steady_clock::now();
    const double gap = std::chrono::duration<double>(now - last_poll).count();
    frozen_s = std::max(frozen_s, gap);
    last_poll = now;
    if (polls % 16 == 0) serve_pings();
    if (std::chrono::duration<double>(now - start).count() > g_timeout_s && !done()) {
      int rank = -1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      g_gave_up = true;
      // A rank that was itself stopped blames no one: the others are going down by now.
      const double waited_s = std::chrono::duration<double>(now - start).count();
      const std::string why =
          frozen_s > grace_s() ? "this rank was itself frozen for " + std::to_string(std::lround(frozen_s)) +
                                     " s inside the wait (stopped, or starved of CPU)"
          : frozen_within(waited_s) ? std::string("this rank was itself frozen during the wait (stopped, or starved of CPU)")
                                    : diagnose_timeout(members, if_all_answer);
      announce_leaving();
      throw std::runtime_error(what + " did not complete within 'runtime.comm_timeout_s' (" +
                               std::to_string(static_cast<int>(g_timeout_s)) + " s) on rank " +
                               std::to_string(rank) + ": " + why);
    }
  }
}

namespace {

// Waits for an MPI request (wait_until's polling, deadline and diagnosis).
void wait_for(MPI_Request& request, const std::string& what, const std::vector<int>& members) {
  wait_until(
      [&] {
        int done = 0;
        check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
        return done != 0;
      },
      what, members);
}

struct MpiRequest final : CommRequest {
  MPI_Request handle = MPI_REQUEST_NULL;
  MPI_Datatype owned_type = MPI_DATATYPE_NULL;  // freed once the operation completes
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const std::vector<int>& members, GroupKind kind, int ranks_per_node,
                  CommStats& stats)
      : stats_(stats), members_(members) {
    ensure_ping_comm();
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    const auto me = std::find(members.begin(), members.end(), world_rank);
    if (me == members.end()) throw std::logic_error("communicator built by a non-member");
    rank_ = static_cast<int>(me - members.begin());
    size_ = static_cast<int>(members.size());
    // Color: the group's first member identifies the group; key: the order in the group.
    check(MPI_Comm_split(MPI_COMM_WORLD, members.front(), rank_, &comm_), "MPI_Comm_split");
    int world_size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    // The world (built with the replication kind, for the byte counters) is named as such.
    describe_ = static_cast<int>(members.size()) == world_size
                    ? "world of ranks 0.." + std::to_string(world_size - 1)
                    : std::string(name(kind)) + " group of ranks " + std::to_string(members.front()) + ".." +
                          std::to_string(members.back()) +
                          (members.size() >= 2 && members[1] - members[0] > 1
                               ? " step " + std::to_string(members[1] - members[0])
                               : "");
    ring_ = RingAccount(members, world_rank, ranks_per_node, kind);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Gathers copy: any 2- or 4-byte element moves as raw words.
  Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    auto req = std::make_unique<MpiRequest>();
    if (size_ == 1) return req;
    const MPI_Datatype element = dtype_size(dtype) == 4 ? MPI_FLOAT : MPI_UINT16_T;
    if (dtype_size(dtype) != 4 && dtype_size(dtype) != 2)
      throw std::logic_error(std::string("MPI all-gather of ") + dtype_name(dtype));
    MPI_Datatype vec;
    check(MPI_Type_vector(static_cast<int>(blocks), static_cast<int>(count),
                          static_cast<int>(block_stride), element, &vec), "MPI_Type_vector");
    check(MPI_Type_create_resized(vec, 0, static_cast<MPI_Aint>(member_stride * dtype_size(dtype)),
                                  &req->owned_type), "MPI_Type_create_resized");
    MPI_Type_free(&vec);
    check(MPI_Type_commit(&req->owned_type), "MPI_Type_commit");
    check(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, 1, req->owned_type, comm_,
                         &req->handle), "MPI_Iallgather");
    charge(CollectiveOp::all_gather, static_cast<double>(size_ - 1) * static_cast<double>(blocks * count * dtype_size(dtype)));
    return req;
  }

  // Sums run in fp32 only: MPI has no half-precision sum (the staged communicator converts).
  Request reduce_scatter(const void* send, void* recv, DType dtype, size_t count) override {
    expect_fp32("reduce-scatter", dtype);
    auto req = std::make_unique<MpiRequest>();
    if (size_ == 1) {
      std::copy_n(static_cast<const float*>(send), count, static_cast<float*>(recv));
      return req;
    }
    check(MPI_Ireduce_scatter_block(send, recv, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_,
                                    &req->handle), "MPI_Ireduce_scatter_block");
    charge(CollectiveOp::reduce_scatter, static_cast<double>(size_ - 1) * static_cast<double>(count * sizeof(float)));
    return req;
  }

  Request all_reduce(void* data, DType dtype, size_t count) override {
    expect_fp32("all-reduce", dtype);
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
    wait_for(req->handle, "a collective on the " + describe_, members_);
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
      wait_for(r, "a sum on the " + describe_, members_);
    }
    return value;
  }

  uint64_t first_member_value(uint64_t value) override {
    if (size_ > 1) {
      MPI_Request r;
      check(MPI_Ibcast(&value, 1, MPI_UINT64_T, 0, comm_, &r), "MPI_Ibcast");
      wait_for(r, "a broadcast on the " + describe_, members_);
    }
    return value;
  }

 private:
  static void expect_fp32(const char* what, DType dtype) {
    if (dtype != DType::f32) throw std::logic_error(std::string("MPI ") + what + " of " + dtype_name(dtype) + ": fp32 only");
  }
  void charge(CollectiveOp op, double bytes) { ring_.charge(stats_, op, bytes); }

  CommStats& stats_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  RingAccount ring_;
  std::vector<int> members_;  // world ranks, in group order
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
  wait_for(r, "a sum over all ranks", {});
}

void world_barrier() {
  MPI_Request r;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
  wait_for(r, "a barrier of all ranks", {});
}

void world_broadcast(void* data, int bytes, int root) {
  MPI_Request r;
  check(MPI_Ibcast(data, bytes, MPI_BYTE, root, MPI_COMM_WORLD, &r), "MPI_Ibcast");
  wait_for(r, "a broadcast from rank " + std::to_string(root), {});
}

void set_comm_timeout(double seconds) { g_timeout_s = seconds; }
double comm_timeout() { return g_timeout_s; }

bool world_all(bool ok) {
  int value = ok ? 1 : 0;
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  wait_for(r, "an agreement of all ranks", {});
  return value == 1;
}

}  // namespace mics
