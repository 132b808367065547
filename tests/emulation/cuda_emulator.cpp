#include "tests/emulation/cuda_emulator.h"

#include <elf.h>
#include <link.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <type_traits>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace mics::cuda {
alignas(16) unsigned char shared_bytes[kMaxDynamicSharedBytes];
}  // namespace mics::cuda

namespace mics::cuda_emulator {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxWarps = kMaxThreads / kWarpSize;
// The fused attention kernels reach ~5 KiB (their register arrays and the mma's operand
// matrices), at -O0 as at -O3.
constexpr size_t kStackBytes = 64 * 1024;

// A kernel broke a rule of the CUDA execution model (or one this emulator relies on): the
// state of the other threads is meaningless from here, so stop with the culprit named.
[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s (block %u,%u,%u, thread %u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
               threadIdx.x);
  std::abort();
}

struct Barrier {
  int first_thread = 0, thread_count = 0;
  int arrived = 0;
};

enum class ThreadState { ready, waiting, finished };

struct Thread {
  ucontext_t context;
  std::vector<char> stack;
  ThreadState state = ThreadState::finished;
  // Warp-wide operations this thread has entered; every lane of a warp meets the same
  // sequence of them, so its parity picks the same exchange slot in every lane.
  unsigned warp_operations = 0;
};

// What the lanes of a warp hand each other in one warp-wide operation.
struct WarpExchange {
  uint32_t a[kWarpSize][4];
  uint32_t b[kWarpSize][2];
  float c[kWarpSize][4];  // the accumulator in, the result out
  uint64_t value[kWarpSize];  // a shuffled value's bits
};

// The block being run. Plain globals: every emulated thread runs on the launching thread.
struct Block {
  std::vector<Thread> threads = std::vector<Thread>(kMaxThreads);
  int thread_count = 0;
  int running = -1;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  Barrier whole_block;
  Barrier warps[kMaxWarps];
  // Two slots per warp, used in turn: a lane writes slot k % 2 for operation k only after
  // operation k - 1 completed, that is after every lane has read operation k - 2's results.
  WarpExchange exchange[kMaxWarps][2];
};
Block block;

Thread& running_thread() { return block.threads[static_cast<size_t>(block.running)]; }

// Suspends the running thread until every thread of `barrier` has arrived. The last to
// arrive runs `on_complete` first (the warp-wide operations compute there, once for all
// lanes) and goes on without suspending; the others resume after it.
template <class OnComplete>
void arrive_and_wait(Barrier& barrier, OnComplete&& on_complete) {
  if (++barrier.arrived < barrier.thread_count) {
    Thread& me = running_thread();
    me.state = ThreadState::waiting;
    swapcontext(&me.context, &block.scheduler);
    return;
  }
  barrier.arrived = 0;
  on_complete();
  for (int i = barrier.first_thread; i < barrier.first_thread + barrier.thread_count; ++i)
    if (i != block.running) block.threads[static_cast<size_t>(i)].state = ThreadState::ready;
}

int lane() { return static_cast<int>(threadIdx.x) % kWarpSize; }
int warp() { return static_cast<int>(threadIdx.x) / kWarpSize; }

// Enters the running thread's next warp-wide operation: its warp's barrier and exchange slot.
WarpExchange& next_warp_exchange() {
  if (block.thread_count % kWarpSize != 0) fail("warp-wide operation in a block of partial warps");
  const unsigned slot = running_thread().warp_operations++ % 2;
  return block.exchange[warp()][slot];
}

void thread_entry() {
  (*block.body)();
  running_thread().state = ThreadState::finished;
}  // returns to block.scheduler (uc_link)

// A thread ready to start at thread_entry on its own stack. (getcontext in a frame of its
// own: no local of the caller lives across it.)
void start_thread(Thread& t) {
  if (t.stack.empty()) t.stack.resize(kStackBytes);
  getcontext(&t.context);
  t.context.uc_stack.ss_sp = t.stack.data();
  t.context.uc_stack.ss_size = t.stack.size();
  t.context.uc_link = &block.scheduler;
  makecontext(&t.context, thread_entry, 0);
  t.state = ThreadState::ready;
  t.warp_operations = 0;
}

// The kernels' static __shared__ arrays: the writable function-local statics of namespace
// mics::cuda (mangled "_ZZN4mics4cuda..."), found in this program's symbol table, since
// the compiler keeps a template's statics out of any section we could name.
struct SharedArray {
  unsigned char* data;
  size_t bytes;
};

std::vector<SharedArray> find_static_shared_arrays() {
  std::ifstream file("/proc/self/exe", std::ios::binary);
  const std::vector<char> elf((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (elf.size() < sizeof(Elf64_Ehdr)) fail("cannot read /proc/self/exe for the static shared arrays");
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(elf.data() + header->e_shoff);
  // Where the program was loaded: the first object dl_iterate_phdr reports is the program.
  ElfW(Addr) load_bias = 0;
  dl_iterate_phdr([](dl_phdr_info* info, size_t, void* out) {
    *static_cast<ElfW(Addr)*>(out) = info->dlpi_addr;
    return 1;
  }, &load_bias);
  std::vector<SharedArray> arrays;
  bool has_symbols = false;
  for (int i = 0; i < header->e_shnum; ++i) {
    if (sections[i].sh_type != SHT_SYMTAB) continue;
    has_symbols = true;
    const auto* symbols = reinterpret_cast<const Elf64_Sym*>(elf.data() + sections[i].sh_offset);
    const char* names = elf.data() + sections[sections[i].sh_link].sh_offset;
    const size_t count = sections[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; ++k) {
      const Elf64_Sym& sym = symbols[k];
      if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_size == 0 || sym.st_shndx == SHN_UNDEF ||
          sym.st_shndx >= header->e_shnum || !(sections[sym.st_shndx].sh_flags & SHF_WRITE))
        continue;
      if (std::strncmp(names + sym.st_name, "_ZZN4mics4cuda", 14) != 0) continue;
      arrays.push_back({reinterpret_cast<unsigned char*>(load_bias + sym.st_value), sym.st_size});
    }
  }
  if (!has_symbols) fail("the test program has no symbol table (stripped?): its static shared arrays cannot be found");
  return arrays;
}

// Warps are scheduled greedily: one warp's threads are resumed until none of them is ready
// (all wait at __syncthreads or have finished), and only then the next warp's, so a warp runs
// ahead through its shuffles and mmas to the block's next barrier, as a GPU warp may. Even
// blocks favour the lowest-numbered warp, odd ones the highest: a barrier missing before
// shared memory is written again (a fast warp overwriting what a slow one has yet to read)
// then changes the results.
void run_block(size_t dynamic_shared_bytes, bool highest_first) {
  // Poisoned up to the end of the array: past the launch's size it must stay so.
  std::memset(cuda::shared_bytes, 0xff, sizeof cuda::shared_bytes);
  static const std::vector<SharedArray> static_arrays = find_static_shared_arrays();
  for (const SharedArray& a : static_arrays) std::memset(a.data, 0xff, a.bytes);
  for (int i = 0; i < block.thread_count; ++i) start_thread(block.threads[static_cast<size_t>(i)]);
  const int warps = (block.thread_count + kWarpSize - 1) / kWarpSize;
  auto ready_in = [](int w) {
    for (int i = w * kWarpSize; i < std::min((w + 1) * kWarpSize, block.thread_count); ++i)
      if (block.threads[static_cast<size_t>(i)].state == ThreadState::ready) return true;
    return false;
  };
  for (;;) {
    int chosen = -1;
    for (int k = 0; k < warps && chosen < 0; ++k) {
      const int w = highest_first ? warps - 1 - k : k;
      if (ready_in(w)) chosen = w;
    }
    if (chosen < 0) {
      for (int i = 0; i < block.thread_count; ++i)
        if (block.threads[static_cast<size_t>(i)].state != ThreadState::finished)
          fail("deadlock: threads wait at a barrier that others never reach");
      break;
    }
    for (int i = chosen * kWarpSize; i < std::min((chosen + 1) * kWarpSize, block.thread_count); ++i) {
      Thread& t = block.threads[static_cast<size_t>(i)];
      if (t.state != ThreadState::ready) continue;
      block.running = i;
      threadIdx = {static_cast<unsigned>(i), 0, 0};
      swapcontext(&block.scheduler, &t.context);
    }
  }
  for (size_t i = dynamic_shared_bytes; i < sizeof cuda::shared_bytes; ++i)
    if (cuda::shared_bytes[i] != 0xff) fail("write past the launch's dynamic shared memory");
}

}  // namespace

void run(dim3 grid, int threads_per_block, size_t dynamic_shared_bytes, const std::function<void()>& thread_body) {
  if (threads_per_block < 1 || threads_per_block > kMaxThreads) fail("unsupported block size");
  if (dynamic_shared_bytes > cuda::kMaxDynamicSharedBytes) fail("more dynamic shared memory than the GPU has");
  gridDim = grid;
  blockDim = {static_cast<unsigned>(threads_per_block), 1, 1};
  block.thread_count = threads_per_block;
  block.body = &thread_body;
  block.whole_block = {0, threads_per_block, 0};
  for (int w = 0; w * kWarpSize < threads_per_block; ++w) block.warps[w] = {w * kWarpSize, kWarpSize, 0};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block(dynamic_shared_bytes, (x + y + z) % 2 == 1);
      }
}

void sync_block() {
  arrive_and_wait(block.whole_block, [] {});
}

}  // namespace mics::cuda_emulator

namespace mics::cuda_emulator {
namespace {
// Every lane of the warp hands in its value's bits and gets lane (this lane ^ lane_mask)'s.
template <class T>
T shuffle_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  if (mask != 0xffffffffu) fail("__shfl_xor_sync without the full mask");
  WarpExchange& x = next_warp_exchange();
  x.value[lane()] = 0;
  std::memcpy(&x.value[lane()], &value, sizeof(T));
  arrive_and_wait(block.warps[warp()], [] {});
  T result;
  std::memcpy(&result, &x.value[lane() ^ lane_mask], sizeof(T));
  return result;
}
}  // namespace
}  // namespace mics::cuda_emulator

float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
  return mics::cuda_emulator::shuffle_xor(mask, value, lane_mask);
}
double __shfl_xor_sync(unsigned mask, double value, int lane_mask) {
  return mics::cuda_emulator::shuffle_xor(mask, value, lane_mask);
}
unsigned long long __shfl_xor_sync(unsigned mask, unsigned long long value, int lane_mask) {
  return mics::cuda_emulator::shuffle_xor(mask, value, lane_mask);
}

namespace mics::cuda {
namespace {

template <class T>
void warp_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  using namespace cuda_emulator;
  WarpExchange& x = next_warp_exchange();
  const int me = lane();
  std::memcpy(x.a[me], a, sizeof a);
  x.b[me][0] = b0, x.b[me][1] = b1;
  std::memcpy(x.c[me], c, sizeof c);
  arrive_and_wait(block.warps[warp()], [&x] {
    const auto low = [](uint32_t r) { return to_f(T{static_cast<uint16_t>(r & 0xffffu)}); };
    const auto high = [](uint32_t r) { return to_f(T{static_cast<uint16_t>(r >> 16)}); };
    // The PTX ISA's fragment layout (m16n8k16, .row.col), g = lane / 4, t = lane % 4:
    // a[r] holds A(g + 8 (r % 2), 2t + 8 (r / 2)) and the next column; b[r] holds
    // B(2t + 8r, g) and the next row; c[i] is C(g + 8 (i / 2), 2t + i % 2).
    double A[16][16], B[16][8];
    for (int l = 0; l < kWarpSize; ++l) {
      const int g = l / 4, t = l % 4;
      for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        A[row][col] = low(x.a[l][r]);
        A[row][col + 1] = high(x.a[l][r]);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = low(x.b[l][r]);
        B[2 * t + 8 * r + 1][g] = high(x.b[l][r]);
      }
    }
    for (int l = 0; l < kWarpSize; ++l) {
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        double sum = x.c[l][i];
        for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
        x.c[l][i] = static_cast<float>(sum);
      }
    }
  });
  std::memcpy(c, x.c[me], sizeof c);
}

}  // namespace

void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bf16) { warp_mma<bf16>(c, a, b0, b1); }
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, f16) { warp_mma<f16>(c, a, b0, b1); }

}  // namespace mics::cuda
