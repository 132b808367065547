#include "engine/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "kernels/cuda/event_poll.h"

namespace mics {

namespace {

[[noreturn]] void fail(const std::string& what, const char* library_message, const char* file, int line) {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw std::runtime_error(what + " failed on rank " + std::to_string(rank) + ": " + library_message + " (" + file +
                           ":" + std::to_string(line) + ")");
}

// NCCL's error string says only the kind ("invalid usage"); its last error says what
// ("Duplicate GPU detected ...").
std::string nccl_message(ncclResult_t status) {
  std::string text = ncclGetErrorString(status);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') text += std::string(": ") + last;
  return text;
}

#define MICS_NCCL_CHECK(expr)                                                     \
  do {                                                                           \
    const ncclResult_t mics_nccl_status = (expr);                                \
    if (mics_nccl_status != ncclSuccess)                                         \
      fail(#expr, nccl_message(mics_nccl_status).c_str(), __FILE__, __LINE__);   \
  } while (0)
#define MICS_CUDA_RT_CHECK(expr)                                                 \
  do {                                                                           \
    const cudaError_t mics_cuda_status = (expr);                                 \
    if (mics_cuda_status != cudaSuccess)                                         \
      fail(#expr, cudaGetErrorString(mics_cuda_status), __FILE__, __LINE__);     \
  } while (0)

// Whether the work before `event`'s record has run.
bool event_done(cudaEvent_t event) {
  const cudaError_t state = cuda::poll_event(event);
  if (state == cudaErrorNotReady) return false;
  MICS_CUDA_RT_CHECK(state);
  return true;
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::f64: return ncclFloat64;
  }
  return ncclFloat32;
}

// Every NCCL communicator of this rank, for abort_nccl().
struct Registry {
  std::mutex mutex;
  std::vector<ncclComm_t> comms;
  ncclComm_t world = nullptr;
  cudaStream_t compute = nullptr;
  int device = 0;  // this rank's GPU (the current device is per thread)
  // Set by abort_nccl: from then on this rank's communicators start nothing and wait for
  // nothing (the job is being torn down; their handles may be aborted).
  std::atomic<bool> aborted{false};
  // Set-up calls (init, split) still inside NCCL: a split given up on still uses the world
  // communicator, and NCCL allows no second thread on a communicator meanwhile.
  std::atomic<int> setting_up{0};
} g_nccl;


// A blocking NCCL call (set-up, teardown) on a thread of its own. Such calls wait for every
// peer and have no deadline; run apart, the caller can bound its wait, and a call never
// waited out is left behind with this state (the job is ending by then).
struct BackgroundCall {
  std::mutex mutex;
  std::condition_variable cv;
  bool finished = false;
  ncclComm_t comm = nullptr;  // the communicator the call made, if it makes one
  ncclResult_t result = ncclSuccess;
  std::string message;  // NCCL's words on a failure, taken at once (its last error is global)

  bool done() {
    std::lock_guard<std::mutex> lock(mutex);
    return finished;
  }
  bool wait_for(int seconds) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, std::chrono::seconds(seconds), [&] { return finished; });
  }
};

// Starts `call` on a thread of its own (which selects the device itself: the current device
// is per thread). Throws nothing but the thread's creation failing: teardown uses it too.
std::shared_ptr<BackgroundCall> start_in_background(std::function<ncclResult_t(ncclComm_t*)> call) {
  auto state = std::make_shared<BackgroundCall>();
  std::thread([state, call = std::move(call)] {
    ncclComm_t comm = nullptr;
    const ncclResult_t result = call(&comm);
    const std::string message = result != ncclSuccess ? nccl_message(result) : std::string();
    std::lock_guard<std::mutex> lock(state->mutex);
    state->comm = comm;
    state->result = result;
    state->message = message;
    state->finished = true;
    state->cv.notify_all();
  }).detach();
  return state;
}

// What a set-up that times out while every rank is alive points to.
constexpr const char* kSetUpStuck =
    "NCCL's bootstrap could not connect them (check NCCL_SOCKET_IFNAME and the network between the nodes; "
    "NCCL_DEBUG=INFO says more)";

// A collective NCCL set-up call (init, split) under runtime.comm_timeout_s, answering the
// other ranks' liveness pings meanwhile, so a rank that never arrives is named, not waited
// for forever. Returns the communicator the call made.
ncclComm_t set_up(const std::string& what, std::function<ncclResult_t(ncclComm_t*)> call) {
  int device = 0;
  MICS_CUDA_RT_CHECK(cudaGetDevice(&device));
  ++g_nccl.setting_up;
  const std::shared_ptr<BackgroundCall> state = start_in_background([device, call = std::move(call)](ncclComm_t* made) {
    const ncclResult_t result = cudaSetDevice(device) == cudaSuccess ? call(made) : ncclUnhandledCudaError;
    --g_nccl.setting_up;
    return result;
  });
  wait_until([&] { return state->done(); }, what, {}, kSetUpStuck);
  if (state->result != ncclSuccess) fail(what, state->message.c_str(), __FILE__, __LINE__);
  return state->comm;
}

struct NcclRequest final : CommRequest {
  cudaEvent_t done = nullptr;
  std::vector<cudaEvent_t>* pool = nullptr;  // the issuing communicator's free events
  NcclRequest(cudaEvent_t event, std::vector<cudaEvent_t>* owner) : done(event), pool(owner) {}
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const std::vector<int>& members, GroupKind kind, int ranks_per_node, CommStats& stats)
      : stats_(stats) {
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    const auto me = std::find(members.begin(), members.end(), world_rank);
    if (me == members.end()) throw std::logic_error("NCCL communicator built by a non-member");
    rank_ = static_cast<int>(me - members.begin());
    size_ = static_cast<int>(members.size());
    ring_ = RingAccount(members, world_rank, ranks_per_node, kind);
    members_ = members;
    describe_ = std::string(name(kind)) + " group of ranks " + std::to_string(members.front()) + ".." +
                std::to_string(members.back());
    // Host scalars (norms, counts) go over MPI, NCCL wanting device memory: through the
    // MPI communicator of the same members, whose waits keep runtime.comm_timeout_s and
    // answer its liveness pings.
    host_ = make_mpi_communicator(members, kind, ranks_per_node, stats);
    // Every rank of the world calls the split; the group's first member is its colour.
    comm_ = set_up("NCCL's split of the " + describe_ + " (ncclCommSplit)", [colour = members.front(), key = rank_](ncclComm_t* made) {
      return ncclCommSplit(g_nccl.world, colour, key, made, nullptr);
    });
    {
      std::lock_guard<std::mutex> lock(g_nccl.mutex);
      g_nccl.comms.push_back(comm_);
    }
    // At the device's highest priority, as the backend's compute stream (only the
    // optimizer's side queue runs below them).
    int least = 0, greatest = 0;
    MICS_CUDA_RT_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    MICS_CUDA_RT_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
    MICS_CUDA_RT_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
    // Communicators are destroyed (or aborted) by the registry at exit.
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // After abort_nccl every call returns at once: only the teardown of a failed job gets here.
  Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    if (size_ == 1 || g_nccl.aborted) return nullptr;
    begin();
    return gather(base, dtype, count, blocks, member_stride, block_stride);
  }

  bool orders_on_device() const override { return true; }
  Request all_gather_after(Request& before, void* base, DType dtype, size_t count, size_t blocks,
                           size_t member_stride, size_t block_stride) override {
    if (g_nccl.aborted) {
      if (before) forget(before);
      return nullptr;
    }
    if (size_ == 1) return std::move(before);  // nothing to gather: done when `before` is
    begin();
    if (before) {
      // This stream waits for the event as recorded now; the event goes back to its own
      // communicator's pool at once (a later record there does not move this wait), and
      // the compute stream needs no wait of its own: this gather's completion implies it.
      auto* first = static_cast<NcclRequest*>(before.get());
      MICS_CUDA_RT_CHECK(cudaStreamWaitEvent(stream_, first->done, 0));
      first->pool->push_back(first->done);
      before.reset();
    }
    return gather(base, dtype, count, blocks, member_stride, block_stride);
  }

  Request reduce_scatter(const void* send, void* recv, DType dtype, size_t count) override {
    if (g_nccl.aborted) return nullptr;
    begin();
    MICS_NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_type(dtype), ncclSum, comm_, stream_));
    ring_.charge(stats_, CollectiveOp::reduce_scatter,
                 static_cast<double>(size_ - 1) * static_cast<double>(count * dtype_size(dtype)));
    return finish();
  }

  Request all_reduce(void* data, DType dtype, size_t count) override {
    if (size_ == 1 || g_nccl.aborted) return nullptr;
    begin();
    MICS_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, comm_, stream_));
    ring_.charge(stats_, CollectiveOp::all_reduce,
                 2.0 * static_cast<double>(size_ - 1) * static_cast<double>(count * dtype_size(dtype)) / size_);
    return finish();
  }

  void wait(Request& request) override {
    auto* r = static_cast<NcclRequest*>(request.get());
    if (r == nullptr) return;
    if (g_nccl.aborted) {
      forget(request);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    try {
      wait_until(
          [&] {
            if (event_done(r->done)) return true;
            check_async_errors();
            return false;
          },
          "a collective on the " + describe_, members_,
          "the ranks disagree on which collective comes next, or NCCL's transport between them is stuck");
    } catch (...) {
      // No peer may wait on this rank's collectives any more: abort them all, then fail.
      forget(request);
      abort_nccl();
      throw;
    }
    stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    release(request);
  }

  bool test(Request& request) override {
    auto* r = static_cast<NcclRequest*>(request.get());
    if (r == nullptr) return true;
    if (g_nccl.aborted) {
      forget(request);
      return true;
    }
    if (!event_done(r->done)) return false;
    release(request);
    return true;
  }

  double sum_scalar(double value) override { return host_->sum_scalar(value); }
  uint64_t first_member_value(uint64_t value) override { return host_->first_member_value(value); }

 private:
  // Enqueues the all-gather on this communicator's stream (begin() already called).
  Request gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride, size_t block_stride) {
    const size_t esize = dtype_size(dtype);
    const ncclDataType_t type = nccl_type(dtype);
    char* bytes = static_cast<char*>(base);
    Group group;  // one launch for the calls below
    if (member_stride == count && (blocks == 1 || block_stride >= count * static_cast<size_t>(size_))) {
      // Each block holds the members' chunks side by side (a flat gather; the hierarchical
      // gather's second stage, blocks apart): an in-place all-gather per block, NCCL's
      // ring or NVLink algorithms at full bandwidth (send buffer = this rank's slot).
      for (size_t b = 0; b < blocks; ++b) {
        char* window = bytes + b * block_stride * esize;
        MICS_NCCL_CHECK(ncclAllGather(window + static_cast<size_t>(rank_) * count * esize, window, count, type, comm_,
                                      stream_));
      }
    } else {
      // Members' chunks interleaved (the hierarchical gather's first stage): every
      // member's blocks by point-to-point sends and receives straight into place (calls to
      // one peer in a group run in order, so the blocks pair up).
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        for (size_t b = 0; b < blocks; ++b) {
          char* mine = bytes + (static_cast<size_t>(rank_) * member_stride + b * block_stride) * esize;
          char* theirs = bytes + (static_cast<size_t>(peer) * member_stride + b * block_stride) * esize;
          MICS_NCCL_CHECK(ncclSend(mine, count, type, peer, comm_, stream_));
          MICS_NCCL_CHECK(ncclRecv(theirs, count, type, peer, comm_, stream_));
        }
      }
    }
    group.end();
    ring_.charge(stats_, CollectiveOp::all_gather, static_cast<double>(size_ - 1) * static_cast<double>(blocks * count * esize));
    return finish();
  }

  // ncclGroupStart now, ncclGroupEnd at end() or, when a call in the group failed and
  // threw, on the way out (NCCL's group state is per thread and must not stay open).
  struct Group {
    Group() { MICS_NCCL_CHECK(ncclGroupStart()); }
    void end() {
      open = false;
      MICS_NCCL_CHECK(ncclGroupEnd());
    }
    ~Group() {
      if (open) ncclGroupEnd();
    }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    bool open = true;
  };

  // Throws if any NCCL communicator of this rank has failed: a wait may depend on another
  // communicator's collective (the second stage of a gather on the first, through events),
  // whose network error would otherwise surface only as this wait's timeout.
  void check_async_errors() const {
    std::lock_guard<std::mutex> lock(g_nccl.mutex);
    for (ncclComm_t c : g_nccl.comms) {
      ncclResult_t async = ncclSuccess;
      MICS_NCCL_CHECK(ncclCommGetAsyncError(c, &async));
      if (async != ncclSuccess && async != ncclInProgress)
        fail("a collective on the " + describe_ + (c == comm_ ? std::string() : " (or one it waits for)"),
             nccl_message(async).c_str(), __FILE__, __LINE__);
    }
  }

  // The collective may start once the compute stream has reached this call.
  void begin() {
    MICS_CUDA_RT_CHECK(cudaEventRecord(ready_, g_nccl.compute));
    MICS_CUDA_RT_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  // The request's completion event: a free one, or a new one. As many are in flight at
  // once as a step keeps (a replication all-reduce per layer until the step ends, the
  // prefetched gathers), so the pool grows to that in the first step and is reused after.
  Request finish() {
    cudaEvent_t done = nullptr;
    if (free_events_.empty()) {
      MICS_CUDA_RT_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    } else {
      done = free_events_.back();
      free_events_.pop_back();
    }
    MICS_CUDA_RT_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclRequest>(done, &free_events_);
  }
  void release(Request& request) {
    auto* r = static_cast<NcclRequest*>(request.get());
    // Later kernels on the compute stream see the collective's result.
    MICS_CUDA_RT_CHECK(cudaStreamWaitEvent(g_nccl.compute, r->done, 0));
    r->pool->push_back(r->done);
    request.reset();
  }
  // A request given up (abort): its event may never fire; it is kept out of the pool.
  void forget(Request& request) {
    cudaEventDestroy(static_cast<NcclRequest*>(request.get())->done);
    request.reset();
  }

  CommStats& stats_;
  RingAccount ring_;
  std::string describe_;
  std::vector<int> members_;  // world ranks, in group order
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::vector<cudaEvent_t> free_events_;
  std::unique_ptr<Communicator> host_;  // the members over MPI, for host scalars
};

}  // namespace

bool nccl_available() { return true; }

void init_nccl_world(void* compute_stream) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // Collectives of several communicators are in flight at once (the next layers' gathers,
  // the last layer's reduce-scatter, the replicas' all-reduce), each on its own stream and
  // ordered on the device only where one reads another's result. Without a total order of
  // their kernels NCCL can deadlock across ranks; this makes NCCL (2.26+) take the order in
  // which this rank's one thread issues them, which is the same on every rank. Read at
  // NCCL's first call, so set before it; a value the user set is kept.
  setenv("NCCL_LAUNCH_ORDER_IMPLICIT", "1", 0);
  ncclUniqueId id;
  if (rank == 0) MICS_NCCL_CHECK(ncclGetUniqueId(&id));
  world_broadcast(&id, sizeof id, 0);
  MICS_CUDA_RT_CHECK(cudaGetDevice(&g_nccl.device));
  g_nccl.world = set_up("NCCL's set-up of the world communicator of " + std::to_string(world) + " ranks (ncclCommInitRank)",
                        [world, id, rank](ncclComm_t* made) { return ncclCommInitRank(made, world, id, rank); });
  g_nccl.compute = static_cast<cudaStream_t>(compute_stream);
  std::lock_guard<std::mutex> lock(g_nccl.mutex);
  g_nccl.comms.push_back(g_nccl.world);
}

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& members, GroupKind kind,
                                                     int ranks_per_node, CommStats& stats) {
  if (g_nccl.world == nullptr) throw std::logic_error("init_nccl_world must come before make_nccl_communicator");
  return std::make_unique<NcclCommunicator>(members, kind, ranks_per_node, stats);
}

namespace {

// Ends this rank's use of NCCL: takes every communicator out of the registry (from then on
// they start and wait for nothing) and runs `end` over them on a thread of its own, given
// `deadline_s`: NCCL's teardown may wait for peers that never come, and must not hold the
// rank; past the deadline the thread is left behind with `late` logged.
void end_nccl(void (*end)(const std::vector<ncclComm_t>&), int deadline_s, const char* late) {
  if (g_nccl.aborted.exchange(true)) return;
  std::vector<ncclComm_t> comms;
  {
    std::lock_guard<std::mutex> lock(g_nccl.mutex);
    comms.swap(g_nccl.comms);
    g_nccl.world = nullptr;
  }
  if (comms.empty()) return;
  // Nothing here may throw or be skipped: an error path runs it (a failed cudaSetDevice
  // still lets NCCL's own calls select their communicators' devices).
  const std::shared_ptr<BackgroundCall> call = start_in_background([comms, end, device = g_nccl.device](ncclComm_t*) {
    cudaSetDevice(device);
    end(comms);
    return ncclSuccess;
  });
  if (!call->wait_for(deadline_s)) spdlog::warn("{}", late);
}

}  // namespace

// Every rank finalizes its communicators in the order they were made (the same on every
// rank), each waiting for its peers to get there too, then destroys them.
void finalize_nccl() {
  end_nccl(
      [](const std::vector<ncclComm_t>& comms) {
        for (ncclComm_t c : comms) ncclCommFinalize(c);
        for (ncclComm_t c : comms) ncclCommDestroy(c);
      },
      30, "NCCL's communicators did not finalize within 30 s at the end of the run; exiting without it");
}

// ncclCommAbort can block until the peers abort too (NVIDIA/nccl#863), and the caller's
// next step, MPI_Abort, is what ends the job for certain.
void abort_nccl() {
  end_nccl(
      [](const std::vector<ncclComm_t>& comms) {
        // A set-up call given up on may still be inside NCCL with the world communicator,
        // and NCCL allows no second thread on it: then only MPI_Abort, next, ends the job.
        if (g_nccl.setting_up > 0) {
          spdlog::warn("an NCCL set-up call is still running: its communicators are left to MPI_Abort");
          return;
        }
        for (ncclComm_t c : comms) ncclCommAbort(c);
      },
      10, "ncclCommAbort did not return within 10 s; ending the job without it");
}

}  // namespace mics
