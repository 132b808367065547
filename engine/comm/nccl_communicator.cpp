#include "engine/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace mics {

namespace {

[[noreturn]] void fail(const std::string& what, const char* library_message, const char* file, int line) {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw std::runtime_error(what + " failed on rank " + std::to_string(rank) + ": " + library_message + " (" + file +
                           ":" + std::to_string(line) + ")");
}

#define MICS_NCCL_CHECK(expr)                                                     \
  do {                                                                           \
    const ncclResult_t mics_nccl_status = (expr);                                \
    if (mics_nccl_status != ncclSuccess)                                         \
      fail(#expr, ncclGetErrorString(mics_nccl_status), __FILE__, __LINE__);     \
  } while (0)
#define MICS_CUDA_RT_CHECK(expr)                                                 \
  do {                                                                           \
    const cudaError_t mics_cuda_status = (expr);                                 \
    if (mics_cuda_status != cudaSuccess)                                         \
      fail(#expr, cudaGetErrorString(mics_cuda_status), __FILE__, __LINE__);     \
  } while (0)

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
} g_nccl;


struct NcclRequest final : CommRequest {
  cudaEvent_t done = nullptr;
  explicit NcclRequest(cudaEvent_t event) : done(event) {}
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
    describe_ = std::string(name(kind)) + " group of ranks " + std::to_string(members.front()) + ".." +
                std::to_string(members.back());
    // Host scalars (norms, counts) go over MPI: NCCL wants device memory.
    if (MPI_Comm_split(MPI_COMM_WORLD, members.front(), rank_, &mpi_) != MPI_SUCCESS)
      throw std::runtime_error("MPI_Comm_split failed for the " + describe_);
    // Every rank of the world calls the split; the group's first member is its colour.
    MICS_NCCL_CHECK(ncclCommSplit(g_nccl.world, members.front(), rank_, &comm_, nullptr));
    {
      std::lock_guard<std::mutex> lock(g_nccl.mutex);
      g_nccl.comms.push_back(comm_);
    }
    MICS_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MICS_CUDA_RT_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    // Events for requests in flight: a pool made now, so no step allocates.
    for (int i = 0; i < kEvents; ++i) {
      cudaEvent_t e;
      MICS_CUDA_RT_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      free_events_.push_back(e);
    }
  }
  ~NcclCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && mpi_ != MPI_COMM_NULL) MPI_Comm_free(&mpi_);
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
    // Communicators are destroyed (or aborted) by the registry at exit.
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    if (size_ == 1) return nullptr;
    const size_t esize = dtype_size(dtype);
    char* bytes = static_cast<char*>(base);
    begin();
    if (blocks == 1 && member_stride == count) {
      // Contiguous: NCCL's in-place all-gather (send buffer = this rank's slot).
      MICS_NCCL_CHECK(ncclAllGather(bytes + static_cast<size_t>(rank_) * count * esize, base, count, nccl_type(dtype),
                                    comm_, stream_));
    } else {
      // Strided (the hierarchical gather's stages): every member's blocks by grouped
      // point-to-point sends and receives straight into place.
      MICS_NCCL_CHECK(ncclGroupStart());
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        for (size_t b = 0; b < blocks; ++b) {
          char* mine = bytes + (static_cast<size_t>(rank_) * member_stride + b * block_stride) * esize;
          char* theirs = bytes + (static_cast<size_t>(peer) * member_stride + b * block_stride) * esize;
          MICS_NCCL_CHECK(ncclSend(mine, count, nccl_type(dtype), peer, comm_, stream_));
          MICS_NCCL_CHECK(ncclRecv(theirs, count, nccl_type(dtype), peer, comm_, stream_));
        }
      }
      MICS_NCCL_CHECK(ncclGroupEnd());
    }
    ring_.charge(stats_, CollectiveOp::all_gather, static_cast<double>(size_ - 1) * static_cast<double>(blocks * count * esize));
    return finish();
  }

  Request reduce_scatter(const void* send, void* recv, DType dtype, size_t count) override {
    begin();
    MICS_NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_type(dtype), ncclSum, comm_, stream_));
    ring_.charge(stats_, CollectiveOp::reduce_scatter,
                 static_cast<double>(size_ - 1) * static_cast<double>(count * dtype_size(dtype)));
    return finish();
  }

  Request all_reduce(void* data, DType dtype, size_t count) override {
    if (size_ == 1) return nullptr;
    begin();
    MICS_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, comm_, stream_));
    ring_.charge(stats_, CollectiveOp::all_reduce,
                 2.0 * static_cast<double>(size_ - 1) * static_cast<double>(count * dtype_size(dtype)) / size_);
    return finish();
  }

  void wait(Request& request) override {
    auto* r = static_cast<NcclRequest*>(request.get());
    if (r == nullptr) return;
    const auto start = std::chrono::steady_clock::now();
    for (long polls = 0;; ++polls) {
      const cudaError_t state = cudaEventQuery(r->done);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady) MICS_CUDA_RT_CHECK(state);
      ncclResult_t async = ncclSuccess;
      MICS_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        abort_nccl();
        fail("a collective on the " + describe_, ncclGetErrorString(async), __FILE__, __LINE__);
      }
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > comm_timeout()) {
        abort_nccl();
        int world_rank = -1;
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
        throw std::runtime_error("a collective on the " + describe_ + " did not complete within 'runtime.comm_timeout_s' (" +
                                 std::to_string(static_cast<int>(comm_timeout())) + " s) on rank " +
                                 std::to_string(world_rank) + ": a peer stopped answering; NCCL aborted");
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    stats_.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    release(request);
  }

  bool test(Request& request) override {
    auto* r = static_cast<NcclRequest*>(request.get());
    if (r == nullptr) return true;
    const cudaError_t state = cudaEventQuery(r->done);
    if (state == cudaErrorNotReady) return false;
    MICS_CUDA_RT_CHECK(state);
    release(request);
    return true;
  }

  double sum_scalar(double value) override {
    double total = value;
    if (size_ > 1 && MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, mpi_) != MPI_SUCCESS)
      throw std::runtime_error("MPI_Allreduce of a scalar failed on the " + describe_);
    return total;
  }

 private:
  static constexpr int kEvents = 16;

  // The collective may start once the compute stream has reached this call.
  void begin() {
    MICS_CUDA_RT_CHECK(cudaEventRecord(ready_, g_nccl.compute));
    MICS_CUDA_RT_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  Request finish() {
    if (free_events_.empty()) throw std::logic_error("more than 16 NCCL collectives in flight on the " + describe_);
    cudaEvent_t done = free_events_.back();
    free_events_.pop_back();
    MICS_CUDA_RT_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclRequest>(done);
  }
  void release(Request& request) {
    auto* r = static_cast<NcclRequest*>(request.get());
    // Later kernels on the compute stream see the collective's result.
    MICS_CUDA_RT_CHECK(cudaStreamWaitEvent(g_nccl.compute, r->done, 0));
    free_events_.push_back(r->done);
    request.reset();
  }

  CommStats& stats_;
  RingAccount ring_;
  std::string describe_;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::vector<cudaEvent_t> free_events_;
  MPI_Comm mpi_ = MPI_COMM_NULL;
};

}  // namespace

bool nccl_available() { return true; }

void init_nccl_world(void* compute_stream) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  ncclUniqueId id;
  if (rank == 0) MICS_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  MICS_NCCL_CHECK(ncclCommInitRank(&g_nccl.world, world, id, rank));
  g_nccl.compute = static_cast<cudaStream_t>(compute_stream);
  std::lock_guard<std::mutex> lock(g_nccl.mutex);
  g_nccl.comms.push_back(g_nccl.world);
}

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& members, GroupKind kind,
                                                     int ranks_per_node, CommStats& stats) {
  if (g_nccl.world == nullptr) throw std::logic_error("init_nccl_world must come before make_nccl_communicator");
  return std::make_unique<NcclCommunicator>(members, kind, ranks_per_node, stats);
}

void abort_nccl() {
  std::lock_guard<std::mutex> lock(g_nccl.mutex);
  for (ncclComm_t c : g_nccl.comms) ncclCommAbort(c);
  g_nccl.comms.clear();
  g_nccl.world = nullptr;
}

}  // namespace mics
