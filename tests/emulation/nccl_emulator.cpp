// NCCL's collectives and the CUDA runtime's streams and events, emulated over MPI on host
// memory (see tests/emulation/nccl/nccl.h), so that engine/comm/nccl_communicator.cpp runs
// with several ranks where there is no GPU.
//
// As on a device, work is asynchronous: a group of NCCL calls becomes one launch on its
// stream, as does each kernel that mics_emulated_launch_work queues (the emulated device
// backend's ops, tests/emulation/emulated_device_backend.h); a thread of the emulator's own
// (the "device") starts each stream's launches in stream order once the events they wait
// for have completed, collectives as MPI nonblocking operations on an MPI communicator of
// their own per NCCL communicator, and completes them. So a caller
// that reads a buffer before its collective has completed sees stale data here as it would
// on a GPU, and a collective that depends on another (cudaStreamWaitEvent) starts after it.
//
// Checked besides, each breach recorded (mics_emulated_take_misuse) and answered with an error:
// the buffer layout NCCL's documentation requires of in-place collectives; the same
// collectives, in the same order and with the same counts and types, on every rank of a
// communicator (exchanged before each launch's data moves); a send and its receive of equal
// size; no use of a destroyed stream, event or communicator; one thread at a time on a
// communicator.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime.h"
#include "nccl.h"
#include "tests/cuda/host_dtype.h"

namespace {

// One launch on a stream: the calls of one NCCL group on that stream, or a wait for an
// event (cudaStreamWaitEvent). Phases run one after another, each a set of MPI requests.
struct Launch {
  // A launch starts no earlier than this (a device a little behind its host: the latency
  // given to mics_emulated_launch_work or mics_emulated_set_collective_latency), so that a
  // buffer read before the collective's wait sees stale data every time, not by chance.
  std::chrono::steady_clock::time_point not_before = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<Launch>> after;  // must be done before this starts
  std::vector<std::function<int(Launch&)>> phases;  // each starts requests; returns an MPI error code
  std::vector<std::function<bool(Launch&)>> checks;  // run after the phase of the same index
  ncclComm_t comm = nullptr;
  size_t phase = 0;
  bool started = false, done = false;
  std::vector<MPI_Request> requests;
  std::vector<int> receives;  // per request: the elements a receive expects, else -1
  std::deque<std::vector<char>> scratch;  // copies of in-place inputs, exchanged signatures
};

}  // namespace

struct mics_emulated_cuda_stream {
  std::deque<std::shared_ptr<Launch>> queue;
  bool destroyed = false;
};
struct mics_emulated_cuda_event {
  std::shared_ptr<Launch> last;  // the stream's last launch when recorded (null: nothing pending)
};
struct mics_emulated_nccl_comm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, size = 0;
  uint64_t collectives = 0;  // issued so far: the sequence number of the next one
  ncclResult_t async = ncclSuccess;
  std::thread::id user;  // the thread inside an NCCL call on it
  int inside = 0;
};

namespace {

std::mutex g_mutex;  // everything below, and every MPI call on an emulated communicator's
                     // requests (the progress thread and the callers)
std::vector<std::string> g_misuse;
std::set<const void*> g_streams, g_events, g_comms;  // live handles
mics_emulated_cuda_stream g_default_stream;
std::vector<mics_emulated_cuda_stream*> g_all_streams{&g_default_stream};  // destroyed ones until drained
std::thread g_device;
std::atomic<bool> g_stop{false};
std::atomic<int> g_collective_latency_us{1000};  // mics_emulated_set_collective_latency
std::once_flag g_ops_once;
MPI_Op g_sum_bf16 = MPI_OP_NULL, g_sum_f16 = MPI_OP_NULL;
thread_local int t_group_depth = 0;
std::string g_last_error;

// What went wrong, for the caller's error message (NCCL's "last error") and the test.
void misuse(const std::string& what) {  // g_mutex held
  g_misuse.push_back(what);
  g_last_error = what;
  std::fprintf(stderr, "NCCL emulator: %s\n", what.c_str());
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

bool launch_advances(Launch& l);

// Starts and completes whatever can be (g_mutex held): every stream's launches in order.
void progress() {
  for (auto it = g_all_streams.begin(); it != g_all_streams.end();) {
    mics_emulated_cuda_stream* s = *it;
    while (!s->queue.empty() && launch_advances(*s->queue.front())) {
      s->queue.front()->done = true;
      s->queue.pop_front();
    }
    if (s->destroyed && s->queue.empty()) {
      delete s;
      it = g_all_streams.erase(it);
    } else {
      ++it;
    }
  }
}

void fail_launch(Launch& l, const std::string& what) {
  misuse(what);
  if (l.comm != nullptr) l.comm->async = ncclSystemError;
}

// Keeps a request just started for `l` (with the bytes a receive expects); returns `rc`.
int started(Launch& l, int rc, MPI_Request request, int receive_bytes = -1) {
  if (rc != MPI_SUCCESS) return rc;
  l.requests.push_back(request);
  l.receives.push_back(receive_bytes);
  return rc;
}

// True once `l` has completed (or failed).
bool launch_advances(Launch& l) {
  if (!l.started) {
    if (std::chrono::steady_clock::now() < l.not_before) return false;
    for (const auto& a : l.after)
      if (!a->done) return false;
    l.after.clear();  // (no chain of finished launches kept alive through events)
    l.started = true;
    if (l.phases.empty()) return true;
    if (const int rc = l.phases[0](l); rc != MPI_SUCCESS) {
      fail_launch(l, "MPI refused to start a collective (error " + std::to_string(rc) + ")");
      return true;
    }
  }
  while (true) {
    if (!l.requests.empty()) {
      int finished = 0;
      std::vector<MPI_Status> statuses(l.requests.size());
      const int rc = MPI_Testall(static_cast<int>(l.requests.size()), l.requests.data(), &finished, statuses.data());
      if (rc != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(rc, text, &length);
        fail_launch(l, std::string("a collective failed in MPI: ") + text +
                           " (a send and its receive of different sizes, or calls that do not match)");
        return true;
      }
      if (!finished) return false;
      for (size_t i = 0; i < l.receives.size(); ++i) {
        int got = 0;
        MPI_Get_count(&statuses[i], MPI_BYTE, &got);
        if (l.receives[i] >= 0 && got != l.receives[i]) {
          fail_launch(l, "an ncclRecv of " + std::to_string(l.receives[i]) + " bytes from peer " +
                             std::to_string(statuses[i].MPI_SOURCE) + " got a send of " + std::to_string(got) +
                             " (NCCL needs a send and its receive of the same size)");
          return true;
        }
      }
      l.requests.clear();
      l.receives.clear();
    }
    if (l.phase < l.checks.size() && l.checks[l.phase] && !l.checks[l.phase](l)) return true;
    if (++l.phase >= l.phases.size()) return true;
    if (const int rc = l.phases[l.phase](l); rc != MPI_SUCCESS) {
      fail_launch(l, "MPI refused to start a collective (error " + std::to_string(rc) + ")");
      return true;
    }
  }
}

// The emulated device: advances the queues until shut down, yielding between passes (the
// ranks share a few cores).
void device_loop() {
  while (!g_stop.load()) {
    bool busy = false;
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      progress();
      for (const auto* s : g_all_streams) busy = busy || !s->queue.empty();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(busy ? 100 : 1000));
  }
}

void start_device() {  // g_mutex held
  if (!g_device.joinable()) g_device = std::thread(device_loop);
}

bool live(const std::set<const void*>& handles, const void* h) { return handles.count(h) != 0; }

// ---- element types ----

size_t element_size(ncclDataType_t t) {
  switch (t) {
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclFloat32: return 4;
    case ncclFloat64: return 8;
  }
  return 0;
}
const char* type_name(ncclDataType_t t) {
  switch (t) {
    case ncclFloat16: return "float16";
    case ncclBfloat16: return "bfloat16";
    case ncclFloat32: return "float32";
    case ncclFloat64: return "float64";
  }
  return "?";
}
MPI_Datatype mpi_type(ncclDataType_t t) {
  switch (t) {
    case ncclFloat32: return MPI_FLOAT;
    case ncclFloat64: return MPI_DOUBLE;
    default: return MPI_UINT16_T;  // halves: moved as bits, summed by the ops below
  }
}
// A pairwise sum rounded to the half type after every addition, as a ring's steps are.
template <float (*widen)(uint16_t), uint16_t (*narrow)(float)>
void sum_halves(void* in, void* inout, int* length, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = narrow(widen(a[i]) + widen(b[i]));
}
MPI_Op sum_op(ncclDataType_t t) {
  std::call_once(g_ops_once, [] {
    MPI_Op_create(&sum_halves<mics::from_bf16, mics::bf16_bits>, 1, &g_sum_bf16);
    MPI_Op_create(&sum_halves<mics::from_f16, mics::f16_bits>, 1, &g_sum_f16);
  });
  if (t == ncclBfloat16) return g_sum_bf16;
  if (t == ncclFloat16) return g_sum_f16;
  return MPI_SUM;
}

bool overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

// ---- groups ----

// One call of a group, checked when issued and started when its launch starts.
struct Call {
  ncclComm_t comm;
  cudaStream_t stream;
  bool collective;
  uint64_t signature[4];  // sequence number, kind, count, type (collectives)
  std::string describe;
  std::function<int(Launch&)> start;
};
thread_local std::vector<Call> t_calls;

// Marks `comm` in use by this thread for one call; false (misuse recorded) if it is not a
// live communicator or another thread is inside a call on it.
struct Entry {
  ncclComm_t comm;
  bool ok = false;
  Entry(ncclComm_t c, const char* call) : comm(c) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!live(g_comms, c)) {
      misuse(std::string(call) + " on a communicator that is not live (never made, destroyed or aborted)");
      return;
    }
    if (c->inside > 0 && c->user != std::this_thread::get_id()) {
      misuse(std::string(call) + " while another thread is inside an NCCL call on the same communicator "
                                 "(NCCL allows one thread at a time)");
      return;
    }
    c->user = std::this_thread::get_id();
    ++c->inside;
    ok = true;
  }
  ~Entry() {
    if (!ok) return;
    std::lock_guard<std::mutex> lock(g_mutex);
    --comm->inside;
  }
};

bool to_int(size_t count, int* out) {
  if (count > static_cast<size_t>(INT_MAX)) return false;
  *out = static_cast<int>(count);
  return true;
}

// The group's calls as one launch per stream (g_mutex held).
ncclResult_t launch_group(std::vector<Call> calls) {
  start_device();
  std::vector<cudaStream_t> streams;
  for (const Call& c : calls)
    if (std::find(streams.begin(), streams.end(), c.stream) == streams.end()) streams.push_back(c.stream);
  for (cudaStream_t stream : streams) {
    mics_emulated_cuda_stream* s = stream == nullptr ? &g_default_stream : stream;
    if (stream != nullptr && !live(g_streams, stream)) {
      misuse("an NCCL call on a destroyed stream");
      return ncclInvalidArgument;
    }
    auto l = std::make_shared<Launch>();
    l->not_before += std::chrono::microseconds(g_collective_latency_us.load());
    std::vector<const Call*> mine;
    for (const Call& c : calls)
      if (c.stream == stream) mine.push_back(&c);
    l->comm = mine.front()->comm;
    for (const Call* c : mine)
      if (c->comm != l->comm) {
        misuse("the emulator takes one communicator per stream in a group");
        return ncclInvalidUsage;
      }
    // Phase 1: the collectives' signatures (sequence, kind, count, type), compared across
    // the communicator's ranks before any data moves.
    std::vector<uint64_t> signature;
    std::string describe;
    for (const Call* c : mine) {
      if (!c->collective) continue;
      signature.insert(signature.end(), c->signature, c->signature + 4);
      describe += (describe.empty() ? "" : ", ") + c->describe;
    }
    if (!signature.empty()) {
      uint64_t digest[2] = {signature.size(), 1469598103934665603ull};  // FNV-1a over the words
      for (uint64_t w : signature) digest[1] = (digest[1] ^ w) * 1099511628211ull;
      const int size = l->comm->size;
      l->phases.push_back([digest0 = digest[0], digest1 = digest[1], size](Launch& launch) {
        const uint64_t mine[2] = {digest0, digest1};
        launch.scratch.emplace_back(sizeof mine);
        std::memcpy(launch.scratch.back().data(), mine, sizeof mine);
        launch.scratch.emplace_back(sizeof(uint64_t) * 2 * static_cast<size_t>(size));
        MPI_Request r;
        const int rc = MPI_Iallgather(launch.scratch[launch.scratch.size() - 2].data(), 2, MPI_UINT64_T,
                                      launch.scratch.back().data(), 2, MPI_UINT64_T, launch.comm->mpi, &r);
        return started(launch, rc, r);
      });
      l->checks.push_back([describe, seq = signature[0]](Launch& launch) {
        const auto* all = reinterpret_cast<const uint64_t*>(launch.scratch.back().data());
        std::string differ;
        for (int r = 0; r < launch.comm->size; ++r)
          if (all[2 * r] != all[2 * launch.comm->rank] || all[2 * r + 1] != all[2 * launch.comm->rank + 1])
            differ += (differ.empty() ? "" : ", ") + std::to_string(r);
        if (differ.empty()) return true;
        fail_launch(launch, "rank " + std::to_string(launch.comm->rank) + " of a communicator of " +
                                std::to_string(launch.comm->size) + " issued, as its collective number " +
                                std::to_string(seq) + ", " + describe + ", while rank(s) " + differ +
                                " of it issued something else (NCCL needs the same calls in the same order on every rank)");
        return false;
      });
    }
    // Phase 2: the data, every call of the group at once.
    std::vector<std::function<int(Launch&)>> starts;
    for (const Call* c : mine) starts.push_back(c->start);
    l->phases.push_back([starts](Launch& launch) {
      for (const auto& start : starts)
        if (const int rc = start(launch); rc != MPI_SUCCESS) return rc;
      return MPI_SUCCESS;
    });
    s->queue.push_back(l);  // after the stream's earlier launches: progress() takes each queue in order
  }
  progress();
  return ncclSuccess;
}

// Queues `call` in the open group, or launches it alone.
ncclResult_t issue(Call call) {
  if (t_group_depth > 0) {
    t_calls.push_back(std::move(call));
    return ncclSuccess;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<Call> one;
  one.push_back(std::move(call));
  return launch_group(std::move(one));
}

ncclResult_t invalid(const std::string& what) {
  std::lock_guard<std::mutex> lock(g_mutex);
  misuse(what);
  return ncclInvalidArgument;
}

Call collective(ncclComm_t comm, cudaStream_t stream, uint64_t kind, size_t count, ncclDataType_t type,
                const std::string& name) {
  Call c{comm, stream, true, {comm->collectives++, kind, count, static_cast<uint64_t>(type)},
         name + " of " + std::to_string(count) + " " + type_name(type), {}};
  return c;
}

}  // namespace

// ---------------------------------------------------------------- the CUDA runtime

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
  }
  return "unknown error";
}

namespace {
thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;
}
cudaError_t cudaGetLastError() {
  const cudaError_t error = t_last_error;
  t_last_error = cudaSuccess;
  return error;
}
cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device != 0) return cudaErrorInvalidValue;  // one emulated device per rank
  t_device = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  *least = 0, *greatest = -5;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned int, int priority) {
  if (priority > 0 || priority < -5) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  *stream = new mics_emulated_cuda_stream;
  g_streams.insert(*stream);
  g_all_streams.push_back(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_streams, stream)) {
    misuse("cudaStreamDestroy of a stream that is not live");
    return cudaErrorInvalidResourceHandle;
  }
  g_streams.erase(stream);
  stream->destroyed = true;  // its queued work still completes, as CUDA's does
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  std::lock_guard<std::mutex> lock(g_mutex);
  *event = new mics_emulated_cuda_event;
  g_events.insert(*event);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_events, event)) {
    misuse("cudaEventDestroy of an event that is not live (destroyed twice?)");
    return cudaErrorInvalidResourceHandle;
  }
  g_events.erase(event);
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_events, event) || (stream != nullptr && !live(g_streams, stream))) {
    misuse("cudaEventRecord with an event or stream that is not live");
    return cudaErrorInvalidResourceHandle;
  }
  const mics_emulated_cuda_stream* s = stream == nullptr ? &g_default_stream : stream;
  event->last = s->queue.empty() ? nullptr : s->queue.back();
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_events, event)) {
    misuse("cudaEventQuery of an event that is not live");
    return cudaErrorInvalidResourceHandle;
  }
  progress();
  if (event->last == nullptr || event->last->done) return cudaSuccess;
  t_last_error = cudaErrorNotReady;  // CUDA's runtime keeps it too
  return cudaErrorNotReady;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_events, event) || (stream != nullptr && !live(g_streams, stream))) {
    misuse("cudaStreamWaitEvent with an event or stream that is not live");
    return cudaErrorInvalidResourceHandle;
  }
  if (event->last == nullptr || event->last->done) return cudaSuccess;
  mics_emulated_cuda_stream* s = stream == nullptr ? &g_default_stream : stream;
  auto wait = std::make_shared<Launch>();
  wait->after.push_back(event->last);
  s->queue.push_back(wait);
  start_device();
  return cudaSuccess;
}

namespace {
// Blocks until `last` (a launch queued before the call) is done, advancing the device too.
void wait_for(const std::shared_ptr<Launch>& last) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      progress();
      if (last->done) return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}
}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  std::shared_ptr<Launch> last;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (stream != nullptr && !live(g_streams, stream)) {
      misuse("cudaStreamSynchronize of a stream that is not live");
      return cudaErrorInvalidResourceHandle;
    }
    const mics_emulated_cuda_stream* s = stream == nullptr ? &g_default_stream : stream;
    if (s->queue.empty()) return cudaSuccess;
    last = s->queue.back();
  }
  wait_for(last);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  std::vector<std::shared_ptr<Launch>> last;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const auto* s : g_all_streams)
      if (!s->queue.empty()) last.push_back(s->queue.back());
  }
  for (const auto& l : last) wait_for(l);
  return cudaSuccess;
}

void mics_emulated_launch_work(cudaStream_t stream, std::function<void()> work, int latency_us) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (stream != nullptr && !live(g_streams, stream)) {
    misuse("work queued on a stream that is not live");
    return;
  }
  mics_emulated_cuda_stream* s = stream == nullptr ? &g_default_stream : stream;
  auto l = std::make_shared<Launch>();
  l->not_before += std::chrono::microseconds(latency_us);
  l->phases.push_back([work = std::move(work)](Launch&) {
    work();
    return MPI_SUCCESS;
  });
  s->queue.push_back(std::move(l));
  start_device();
}

void mics_emulated_set_collective_latency(int microseconds) { g_collective_latency_us = microseconds; }

// ---------------------------------------------------------------- NCCL

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}
const char* ncclGetLastError(ncclComm_t) {
  thread_local std::string copy;  // NCCL's is global; a copy per thread keeps the pointer valid
  std::lock_guard<std::mutex> lock(g_mutex);
  copy = g_last_error;
  return copy.c_str();
}

namespace {
constexpr char kIdMark[] = "mics-emulated-nccl-world";
}
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof *id);
  std::memcpy(id->internal, kIdMark, sizeof kIdMark);
  return ncclSuccess;
}

namespace {
// A new emulated communicator over `mpi` (ownership taken).
ncclComm_t adopt(MPI_Comm mpi) {
  MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
  auto* c = new mics_emulated_nccl_comm;
  c->mpi = mpi;
  MPI_Comm_rank(mpi, &c->rank);
  MPI_Comm_size(mpi, &c->size);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_comms.insert(c);
  return c;
}
}  // namespace

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (std::memcmp(id.internal, kIdMark, sizeof kIdMark) != 0)
    return invalid("ncclCommInitRank with a unique id that no ncclGetUniqueId made (was it broadcast?)");
  if (nranks != world || rank != world_rank())
    return invalid("ncclCommInitRank of rank " + std::to_string(rank) + " of " + std::to_string(nranks) +
                   ": the emulator makes the MPI world's communicator only");
  MPI_Comm mpi;
  if (MPI_Comm_split(MPI_COMM_WORLD, 0, rank, &mpi) != MPI_SUCCESS) return ncclSystemError;
  *comm = adopt(mpi);
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t*) {
  Entry entry(comm, "ncclCommSplit");
  if (!entry.ok) return ncclInvalidArgument;
  MPI_Comm mpi;
  if (MPI_Comm_split(comm->mpi, color == NCCL_SPLIT_NOCOLOR ? MPI_UNDEFINED : color, key, &mpi) != MPI_SUCCESS)
    return ncclSystemError;
  *newcomm = mpi == MPI_COMM_NULL ? nullptr : adopt(mpi);
  return ncclSuccess;
}

// Blocks until the communicator's launches have completed, as NCCL's (blocking) finalize does.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  Entry entry(comm, "ncclCommFinalize");
  if (!entry.ok) return ncclInvalidArgument;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (true) {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      progress();
      bool pending = false;
      for (const auto* s : g_all_streams)
        for (const auto& l : s->queue) pending = pending || l->comm == comm;
      if (!pending) return ncclSuccess;
      if (std::chrono::steady_clock::now() > give_up) {
        misuse("ncclCommFinalize: the communicator's collectives did not complete within 60 s");
        return ncclInternalError;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  {
    Entry entry(comm, "ncclCommDestroy");
    if (!entry.ok) return ncclInvalidArgument;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_comms.erase(comm);
  MPI_Comm_free(&comm->mpi);  // the struct stays: a later call on the handle is reported, not a crash
  return ncclSuccess;
}

// Gives up the communicator's launches (never completed: their MPI requests are left).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_comms, comm)) {
    misuse("ncclCommAbort on a communicator that is not live");
    return ncclInvalidArgument;
  }
  for (auto* s : g_all_streams)
    for (auto it = s->queue.begin(); it != s->queue.end();)
      if ((*it)->comm == comm) {
        (*it)->done = true;
        it = s->queue.erase(it);
      } else {
        ++it;
      }
  g_comms.erase(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!live(g_comms, comm)) {
    misuse("ncclCommGetAsyncError on a communicator that is not live");
    return ncclInvalidArgument;
  }
  *async_error = comm->async;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++t_group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return invalid("ncclGroupEnd without ncclGroupStart");
  if (--t_group_depth > 0) return ncclSuccess;
  std::vector<Call> calls;
  calls.swap(t_calls);
  if (calls.empty()) return ncclSuccess;
  std::lock_guard<std::mutex> lock(g_mutex);
  return launch_group(std::move(calls));
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  Entry entry(comm, "ncclAllGather");
  int count = 0;
  if (!entry.ok) return ncclInvalidArgument;
  if (!to_int(sendcount, &count)) return invalid("ncclAllGather: count beyond the emulator's int");
  const size_t bytes = sendcount * element_size(datatype);
  const auto* own_slot = static_cast<const char*>(recvbuff) + static_cast<size_t>(comm->rank) * bytes;
  if (overlap(sendbuff, bytes, recvbuff, bytes * static_cast<size_t>(comm->size)) && sendbuff != own_slot)
    return invalid("ncclAllGather in place must send from recvbuff + rank * sendcount (rank " +
                   std::to_string(comm->rank) + " sent from another place inside recvbuff)");
  Call c = collective(comm, stream, 0, sendcount, datatype, "all_gather");
  c.start = [sendbuff, recvbuff, count, bytes, datatype](Launch& l) {
    l.scratch.emplace_back(static_cast<const char*>(sendbuff), static_cast<const char*>(sendbuff) + bytes);
    MPI_Request r;
    const int rc = MPI_Iallgather(l.scratch.back().data(), count, mpi_type(datatype), recvbuff, count,
                                  mpi_type(datatype), l.comm->mpi, &r);
    return started(l, rc, r);
  };
  return issue(std::move(c));
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  Entry entry(comm, "ncclReduceScatter");
  int count = 0;
  if (!entry.ok) return ncclInvalidArgument;
  if (op != ncclSum) return invalid("ncclReduceScatter: the emulator sums only");
  if (!to_int(recvcount, &count)) return invalid("ncclReduceScatter: count beyond the emulator's int");
  const size_t bytes = recvcount * element_size(datatype), all = bytes * static_cast<size_t>(comm->size);
  const auto* own_slot = static_cast<const char*>(sendbuff) + static_cast<size_t>(comm->rank) * bytes;
  if (overlap(sendbuff, all, recvbuff, bytes) && recvbuff != own_slot)
    return invalid("ncclReduceScatter in place must receive into sendbuff + rank * recvcount");
  Call c = collective(comm, stream, 1, recvcount, datatype, "reduce_scatter");
  c.start = [sendbuff, recvbuff, count, all, datatype](Launch& l) {
    l.scratch.emplace_back(static_cast<const char*>(sendbuff), static_cast<const char*>(sendbuff) + all);
    MPI_Request r;
    const int rc = MPI_Ireduce_scatter_block(l.scratch.back().data(), recvbuff, count, mpi_type(datatype),
                                             sum_op(datatype), l.comm->mpi, &r);
    return started(l, rc, r);
  };
  return issue(std::move(c));
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  Entry entry(comm, "ncclAllReduce");
  int n = 0;
  if (!entry.ok) return ncclInvalidArgument;
  if (op != ncclSum) return invalid("ncclAllReduce: the emulator sums only");
  if (!to_int(count, &n)) return invalid("ncclAllReduce: count beyond the emulator's int");
  const size_t bytes = count * element_size(datatype);
  if (overlap(sendbuff, bytes, recvbuff, bytes) && sendbuff != recvbuff)
    return invalid("ncclAllReduce: send and receive buffers overlap without being the same");
  Call c = collective(comm, stream, 2, count, datatype, "all_reduce");
  c.start = [sendbuff, recvbuff, n, datatype](Launch& l) {
    MPI_Request r;
    const int rc = MPI_Iallreduce(sendbuff == recvbuff ? MPI_IN_PLACE : sendbuff, recvbuff, n, mpi_type(datatype),
                                  sum_op(datatype), l.comm->mpi, &r);
    return started(l, rc, r);
  };
  return issue(std::move(c));
}

namespace {
ncclResult_t point_to_point(bool send, void* buffer, size_t count, ncclDataType_t datatype, int peer,
                            ncclComm_t comm, cudaStream_t stream) {
  const char* name = send ? "ncclSend" : "ncclRecv";
  Entry entry(comm, name);
  int n = 0;
  if (!entry.ok) return ncclInvalidArgument;
  if (!to_int(count, &n)) return invalid(std::string(name) + ": count beyond the emulator's int");
  if (peer < 0 || peer >= comm->size)
    return invalid(std::string(name) + " to peer " + std::to_string(peer) + " of a communicator of " +
                   std::to_string(comm->size));
  Call c{comm, stream, false, {}, name, {}};
  c.start = [send, buffer, n, datatype, peer](Launch& l) {
    MPI_Request r;
    // Calls to one peer pair up in order (MPI's order on one tag and communicator). A
    // receive longer than its send is legal in MPI, not in NCCL: its length is checked.
    if (send) {
      const int rc = MPI_Isend(buffer, n, mpi_type(datatype), peer, 0, l.comm->mpi, &r);
      return started(l, rc, r);
    }
    const int rc = MPI_Irecv(buffer, n, mpi_type(datatype), peer, 0, l.comm->mpi, &r);
    return started(l, rc, r, n * static_cast<int>(element_size(datatype)));
  };
  return issue(std::move(c));
}
}  // namespace

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return point_to_point(true, const_cast<void*>(sendbuff), count, datatype, peer, comm, stream);
}
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return point_to_point(false, recvbuff, count, datatype, peer, comm, stream);
}

// ---------------------------------------------------------------- the emulator's own

std::vector<std::string> mics_emulated_take_misuse() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> taken;
  taken.swap(g_misuse);
  return taken;
}

void mics_emulated_shutdown() {
  g_stop = true;
  if (g_device.joinable()) g_device.join();
}
