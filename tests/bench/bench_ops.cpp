// Backend benchmark: what one device sustains on the ops of a training step, each timed
// alone at a model's shapes (medians over iterations; on CUDA between events on the
// backend's stream, elsewhere by the host clock around a synchronised call).
//  * GEMMs at a transformer layer's shapes (QKV, projection, FFN up and down for hidden C,
//    FFN F and M = micro-batch x seq rows): forward (the CPU rows feed the simulator's
//    cluster files: scripts/sim-validate), backward with and without the bias gradient
//    (what the bias costs: cuBLASLt's BGRADB epilogue on CUDA), its two products alone and
//    on two streams at once, the FFN's GELU fused in; rates in FLOP/s.
//  * The memory-bound ops: rates in bytes/s of the least traffic each needs (each input
//    read once, each output written once), so a kernel that reads a tensor twice, or does
//    not keep enough loads in flight, shows as a rate below the streaming add's. Tensors
//    that would fit the GPU's L2 cache (LayerNorm's) rotate over several copies.
//   OMP_NUM_THREADS=1 build/mics-bench-ops --hidden 256 --ffn 1024 --rows 512 [--json out.json]
//   build/mics-bench-ops --backend cuda --config configs/bench/bert-10b-slice.json [--json out.json]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/config.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/ops.h"

namespace {

using namespace mics;

// Median seconds of `op(i)` (i: the run, for ops that rotate over copies of their
// tensors) over `iters` runs after one warm-up run.
double median_seconds(Backend& be, const std::function<void(int)>& op, int iters) {
  op(iters);
  be.synchronize();
  std::vector<double> t;
  if (DeviceTimeline* timeline = be.timeline()) {
    std::vector<std::pair<int64_t, int64_t>> marks;
    for (int i = 0; i < iters; ++i) {
      const int64_t begin = timeline->mark();
      op(i);
      marks.emplace_back(begin, timeline->mark());
    }
    for (const auto& [begin, end] : marks) t.push_back(timeline->seconds_between(begin, end));
    timeline->forget();
  } else {
    for (int i = 0; i < iters; ++i) {
      const auto start = std::chrono::steady_clock::now();
      op(i);
      be.synchronize();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Shape3 {
  int64_t m, n, k;
};

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"mics-bench-ops: per-op throughput of a backend at a transformer's shapes"};
  std::string backend_name = "cpu", dtype_name_arg, config_path;
  int64_t hidden = 256, ffn = 0, rows = 512, vocab = 0, seq = 0;
  int iters = 20;
  std::string json_path;
  app.add_option("--backend", backend_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype_name_arg, "fp32, bf16 or fp16 (default: fp32 on the CPU, bf16 on CUDA)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  app.add_option("--config", config_path,
                 "take hidden, ffn, vocab, rows (micro-batch x seq), GELU and GEMM autotune from a config "
                 "(instead of --hidden, --ffn, --rows, --vocab)")
      ->check(CLI::ExistingFile);
  app.add_option("--hidden", hidden, "hidden size C")->check(CLI::PositiveNumber);
  app.add_option("--ffn", ffn, "FFN size F (default 4C)");
  app.add_option("--rows", rows, "rows M = micro-batch x sequence length")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "vocabulary V: also the embedding backward and the cross-entropy (default none)");
  app.add_option("--iters", iters, "timed runs per op")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "also write the table as JSON");
  CLI11_PARSE(app, argc, argv);
  GeluKind gelu = GeluKind::tanh;
  bool token_types = false;
  CudaBackendOptions cuda_options;
  if (!config_path.empty()) {
    const Config c = load_config(config_path);
    cuda_options.gemm_autotune = c.runtime.gemm_autotune;  // the GEMMs mics-train would run
    cuda_options.weight_grad_stream = c.runtime.overlap_weight_grads;
    hidden = c.model.hidden, ffn = c.model.ffn, vocab = c.model.vocab_size;
    seq = c.train.seq_len, rows = c.train.micro_batch_size * c.train.seq_len;
    gelu = c.model.type == "bert" ? GeluKind::erf : GeluKind::tanh;
    token_types = c.model.type == "bert";
  }
  if (ffn <= 0) ffn = 4 * hidden;
  if (seq <= 0 || rows % seq != 0) seq = rows;
  const bool cuda = backend_name == "cuda";
  const DType t = dtype_name_arg.empty() ? (cuda ? DType::bf16 : DType::f32) : compute_dtype(dtype_name_arg);
  const size_t es = dtype_size(t);

  std::unique_ptr<Backend> backend = cuda ? make_cuda_backend(0, cuda_options) : make_cpu_backend();
  Backend& be = *backend;
  if (!be.supports(t)) {
    std::fprintf(stderr, "mics-bench-ops: the %s backend does not compute in %s (--dtype)\n", be.name(), dtype_name(t));
    return 2;
  }
  const int64_t widest = std::max(3 * hidden, ffn);
  ScratchBounds bounds;
  bounds.dtype = t;
  bounds.rows = rows;
  bounds.linears = {{3 * hidden, hidden}, {hidden, hidden}, {ffn, hidden}, {hidden, ffn}};
  bounds.layernorm_width = hidden;
  be.reserve_scratch(bounds);

  // Buffers, filled once with values of size ~1 (no op here depends on the values' meaning).
  std::vector<std::unique_ptr<DeviceBuffer>> owned;
  auto buffer = [&](DType dt, int64_t n) -> Tensor {
    owned.push_back(std::make_unique<DeviceBuffer>(be, static_cast<size_t>(n) * dtype_size(dt)));
    std::vector<float> host(static_cast<size_t>(n));
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    if (dt == DType::f32) {
      be.copy_from_host(owned.back()->data(), host.data(), host.size() * sizeof(float));
    } else {
      DeviceBuffer staging(be, host.size() * sizeof(float));
      be.copy_from_host(staging.data(), host.data(), host.size() * sizeof(float));
      be.cast(owned.back()->view(dt, {n}), staging.view(DType::f32, {n}));
      be.synchronize();
    }
    return owned.back()->view(dt, {n});
  };
  auto reshape = [](Tensor x, Shape s) { return Tensor{x.data, x.dtype, s}; };
  const Tensor x = buffer(t, rows * widest), w = buffer(t, widest * hidden), y = buffer(t, rows * widest),
               d_x = buffer(t, rows * widest), d_w = buffer(t, widest * hidden), bias = buffer(t, widest),
               d_b = buffer(t, widest);

  nlohmann::json table = nlohmann::json::array();
  std::printf("# %s backend (%s), M = %lld rows, C = %lld, F = %lld%s\n", be.name(), dtype_name(t),
              static_cast<long long>(rows), static_cast<long long>(hidden), static_cast<long long>(ffn),
              vocab > 0 ? (", V = " + std::to_string(vocab)).c_str() : "");
  std::printf("# %-26s %-22s %12s %12s\n", "op", "shape", "median ms", "rate");
  const double flop_unit = cuda ? 1e12 : 1e9;
  const char* flop_name = cuda ? "TFLOP/s" : "GFLOP/s";
  auto row_flops = [&](const std::string& op, const std::string& shape, double seconds, double flops) {
    std::printf("  %-26s %-22s %12.3f %9.2f %s\n", op.c_str(), shape.c_str(), seconds * 1e3, flops / seconds / flop_unit,
                flop_name);
    table.push_back({{"op", op}, {"shape", shape}, {"ms", seconds * 1e3}, {"gflops", flops / seconds / 1e9}});
  };
  auto row_bytes = [&](const std::string& op, const std::string& shape, double seconds, double bytes) {
    std::printf("  %-26s %-22s %12.3f %9.2f GB/s\n", op.c_str(), shape.c_str(), seconds * 1e3, bytes / seconds / 1e9);
    table.push_back({{"op", op}, {"shape", shape}, {"ms", seconds * 1e3}, {"gbs", bytes / seconds / 1e9}});
  };
  auto mnk = [](const Shape3& s) {
    return std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k);
  };

  // GEMMs: out[M,N] = in[M,K] @ w[N,K]^T.
  struct Gemm {
    const char* name;
    Shape3 s;
  };
  const std::vector<Gemm> gemms = {{"qkv", {rows, 3 * hidden, hidden}}, {"proj", {rows, hidden, hidden}},
                                   {"fc", {rows, ffn, hidden}}, {"fc2", {rows, hidden, ffn}}};
  // A second of GEMMs first: the first row is not timed while a GPU's clocks ramp up.
  for (const auto start = std::chrono::steady_clock::now();
       std::chrono::steady_clock::now() - start < std::chrono::seconds(cuda ? 1 : 0);) {
    be.linear_forward(reshape(y, {rows, ffn}), reshape(x, {rows, hidden}), reshape(w, {ffn, hidden}), Tensor{});
    be.synchronize();
  }
  double flops_total = 0, seconds_total = 0;
  for (const Gemm& g : gemms) {
    const Tensor in = reshape(x, {g.s.m, g.s.k}), wt = reshape(w, {g.s.n, g.s.k}), out = reshape(y, {g.s.m, g.s.n});
    const double sec = median_seconds(be, [&](int) { be.linear_forward(out, in, wt, Tensor{}); }, iters);
    const double flops = 2.0 * static_cast<double>(g.s.m * g.s.n * g.s.k);
    flops_total += flops, seconds_total += sec;
    row_flops(g.name, mnk(g.s), sec, flops);
  }
  const double layer_gemm_gflops = flops_total / seconds_total / 1e9;
  for (const Gemm& g : gemms) {
    const Tensor in = reshape(x, {g.s.m, g.s.k}), wt = reshape(w, {g.s.n, g.s.k}), d_out = reshape(y, {g.s.m, g.s.n}),
                 d_in = reshape(d_x, {g.s.m, g.s.k}), d_wt = reshape(d_w, {g.s.n, g.s.k}), d_bias = reshape(d_b, {g.s.n});
    const double flops = 4.0 * static_cast<double>(g.s.m * g.s.n * g.s.k);
    row_flops(std::string(g.name) + " backward", mnk(g.s),
              median_seconds(be, [&](int) { be.linear_backward(d_in, d_wt, d_bias, d_out, in, wt, Accumulate::no, Accumulate::no); },
                             iters),
              flops);
    row_flops(std::string(g.name) + " backward, no bias", mnk(g.s),
              median_seconds(be, [&](int) { be.linear_backward(d_in, d_wt, Tensor{}, d_out, in, wt, Accumulate::no, Accumulate::no); },
                             iters),
              flops);
  }
  if (cuda)
    std::printf("# bias gradients from cuBLASLt's BGRADB epilogue so far: %lld (the rest as column sums)\n",
                static_cast<long long>(cuda_bias_grad_epilogue_calls(be)));
  {
    // The backward's two products one after the other, and on two streams at once: does one
    // fill the other's last partial wave of tiles (a 4096 x 2560 output is 320 tiles of
    // 128 x 256 on 132 SMs)? dW = d_out^T @ in (linear_backward without d_in) on this
    // backend; dX = d_out @ w as a forward through w read as [K, N] on a second backend (its
    // own stream): the same shape and FLOPs, another layout. Host-clock medians, both
    // backends synchronised after each run, less the time of the synchronisations alone.
    std::unique_ptr<Backend> second = cuda ? make_cuda_backend(0, cuda_options) : make_cpu_backend();
    second->reserve_scratch(bounds);
    auto host_median = [&](const std::function<void()>& fn) {
      fn();
      be.synchronize();
      second->synchronize();
      std::vector<double> t;
      for (int i = 0; i < iters; ++i) {
        const auto start = std::chrono::steady_clock::now();
        fn();
        be.synchronize();
        second->synchronize();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    const double idle = host_median([] {});
    std::printf("# dW and dX (as a forward) alone and on two streams; %.3f ms of synchronisation taken off each\n",
                idle * 1e3);
    for (const Gemm& g : gemms) {
      const Tensor in = reshape(x, {g.s.m, g.s.k}), wt = reshape(w, {g.s.n, g.s.k}), w_kn = reshape(w, {g.s.k, g.s.n}),
                   d_out = reshape(y, {g.s.m, g.s.n}), d_in = reshape(d_x, {g.s.m, g.s.k}),
                   d_wt = reshape(d_w, {g.s.n, g.s.k});
      auto d_weight = [&] { be.linear_backward(Tensor{}, d_wt, Tensor{}, d_out, in, wt, Accumulate::no, Accumulate::no); };
      auto d_input = [&] { second->linear_forward(d_in, d_out, w_kn, Tensor{}); };
      const double flops = 2.0 * static_cast<double>(g.s.m * g.s.n * g.s.k);
      const double dw = std::max(host_median(d_weight) - idle, 1e-9), dx = std::max(host_median(d_input) - idle, 1e-9);
      const double both = std::max(host_median([&] {
                                     d_weight();
                                     d_input();
                                   }) - idle,
                                   1e-9);
      row_flops(std::string(g.name) + " dW alone", mnk(g.s), dw, flops);
      row_flops(std::string(g.name) + " dX alone", mnk(g.s), dx, flops);
      row_flops(std::string(g.name) + " dW | dX, 2 streams", mnk(g.s), both, 2 * flops);
    }
  }
  const char* gelu_name = gelu == GeluKind::erf ? "erf" : "tanh";
  {  // The FFN with its GELU: forward of the first product, backward of the second through it.
    const Shape3 fc{rows, ffn, hidden}, fc2{rows, hidden, ffn};
    const Tensor pre = reshape(y, {rows, ffn}), act = reshape(d_x, {rows, ffn}), in = reshape(x, {rows, hidden});
    row_flops(std::string("fc + gelu ") + gelu_name, mnk(fc),
              median_seconds(be, [&](int) { be.linear_gelu_forward(act, pre, in, reshape(w, {ffn, hidden}), reshape(bias, {ffn}), gelu); },
                             iters),
              2.0 * static_cast<double>(fc.m * fc.n * fc.k));
    const Tensor d_pre = reshape(x, {rows, ffn});
    row_flops(std::string("fc2 backward + gelu ") + gelu_name, mnk(fc2),
              median_seconds(be,
                             [&](int) {
                               be.linear_gelu_backward(d_pre, reshape(d_w, {hidden, ffn}), reshape(d_b, {hidden}),
                                                       reshape(y, {rows, hidden}), act, pre, reshape(w, {hidden, ffn}), gelu,
                                                       Accumulate::no);
                             },
                             iters),
              4.0 * static_cast<double>(fc2.m * fc2.n * fc2.k));
  }

  // Memory-bound ops: bytes each needs at least (inputs read once, outputs written once).
  const int64_t n_add = rows * widest;
  const double add_seconds = median_seconds(be, [&](int) { be.add(reshape(y, {n_add}), reshape(x, {n_add}), reshape(y, {n_add})); }, iters);
  const double stream_gbs = 3.0 * static_cast<double>(es * n_add) / add_seconds / 1e9;
  row_bytes("add", std::to_string(n_add), add_seconds, 3.0 * static_cast<double>(es * n_add));
  {
    // widest / C disjoint copies of each [M, C] tensor inside x, y and d_x (4 at F = 4C:
    // BERT's slice then touches 4 x 42 MB, past the 50 MB L2), one per run in turn.
    const int64_t copies = std::max<int64_t>(1, std::min<int64_t>(4, widest / hidden));
    const Shape mc{rows, hidden};
    const double tensor = static_cast<double>(es * rows * hidden);
    const Tensor gamma = reshape(bias, {hidden}), beta = reshape(d_b, {hidden});
    // mean/rstd in the op's dtype, as the models keep them.
    const Tensor mean = buffer(t, rows * copies), rstd = buffer(t, rows * copies);
    auto copy = [&](const Tensor& base, int i, int64_t per, Shape shape) {
      return Tensor{static_cast<char*>(base.data) + es * per * (i % copies), base.dtype, shape};
    };
    auto a = [&](int i) { return copy(x, i, rows * hidden, mc); };
    auto b = [&](int i) { return copy(y, i, rows * hidden, mc); };
    auto out = [&](int i) { return copy(d_x, i, rows * hidden, mc); };
    auto mu = [&](int i) { return copy(mean, i, rows, {rows}); };
    auto rs = [&](int i) { return copy(rstd, i, rows, {rows}); };
    const std::string shape = std::to_string(rows) + "x" + std::to_string(hidden);
    row_bytes("layernorm forward", shape,
              median_seconds(be, [&](int i) { be.layernorm_forward(out(i), mu(i), rs(i), a(i), gamma, beta, 1e-5f); }, iters),
              2 * tensor);
    // The sum written over a (as the models' residual stream), out as before.
    row_bytes("add + layernorm forward", shape,
              median_seconds(be, [&](int i) { be.add_layernorm_forward(a(i), out(i), mu(i), rs(i), a(i), b(i), gamma, beta, 1e-5f); },
                             iters),
              4 * tensor);
    const Tensor g_gamma = reshape(d_w, {hidden}), g_beta = Tensor{static_cast<char*>(d_w.data) + es * hidden, t, {hidden}};
    row_bytes("layernorm backward", shape,
              median_seconds(be,
                             [&](int i) {
                               be.layernorm_backward(out(i), g_gamma, g_beta, b(i), a(i), gamma, mu(i), rs(i),
                                                     Accumulate::no, Accumulate::no);
                             },
                             iters),
              3 * tensor);
  }
  {
    const int64_t n = rows * ffn;
    const double tensor = static_cast<double>(es * n);
    const std::string shape = std::to_string(rows) + "x" + std::to_string(ffn);
    const Tensor pre = reshape(x, {n}), act = reshape(y, {n}), d = reshape(d_x, {n});
    row_bytes(std::string("gelu ") + gelu_name + " forward", shape,
              median_seconds(be, [&](int) { be.gelu_forward(act, pre, gelu); }, iters), 2 * tensor);
    row_bytes(std::string("gelu ") + gelu_name + " backward", shape,
              median_seconds(be, [&](int) { be.gelu_backward(d, act, pre, gelu); }, iters), 3 * tensor);
  }
  {  // One layer's parameters: the optimizer's fp32 shard and the model's own gradient.
    const int64_t p = 4 * hidden * hidden + 2 * hidden * ffn + 9 * hidden + ffn;
    const Tensor param = buffer(DType::f32, p), m = buffer(DType::f32, p), v = buffer(DType::f32, p),
                 grad = buffer(t, p), copy = t == DType::f32 ? Tensor{} : buffer(t, p);
    AdamWSpec spec;
    spec.lr = 1e-4f;
    spec.weight_decay = 0.01f;
    // param, m, v read and written (fp32), the gradient read, the working copy written.
    const double bytes = static_cast<double>(p) * (6 * 4 + es + (copy.empty() ? 0 : es));
    const std::string shape = std::to_string(p) + " params";
    row_bytes("adamw", shape, median_seconds(be, [&](int) { be.adamw(param, grad, m, v, spec, copy); }, iters), bytes);
    if (cuda) {
      // The partition (runtime.overlap_optimizer_sms N, unchunked): this update on N SMs of
      // a side queue, alone (what N SMs pull from memory), and queued just before the
      // layer's four forward GEMMs on the main stream, which are then planned for the other
      // SMs; against the GEMMs on every SM followed by the update on every SM (the step
      // without the overlap), and at 32 SMs with the GEMMs planned for every SM (what the
      // target gains). Host-clock medians, both streams synchronised after each run, less the
      // synchronisation alone; the GEMMs' rate over the time of both.
      std::printf("# the update on N SMs of a side queue (unchunked), alone and beside the layer's forward GEMMs\n");
      double gemm_flops = 0;
      for (const Gemm& g : gemms) gemm_flops += 2.0 * static_cast<double>(g.s.m * g.s.n * g.s.k);
      auto forward = [&](Backend& on) {
        for (const Gemm& g : gemms)
          on.linear_forward(reshape(y, {g.s.m, g.s.n}), reshape(x, {g.s.m, g.s.k}), reshape(w, {g.s.n, g.s.k}), Tensor{});
      };
      auto timed = [&](Backend& on, const std::function<void()>& fn) {
        auto host_median = [&](const std::function<void()>& f) {
          f();
          on.synchronize();
          std::vector<double> times;
          for (int i = 0; i < iters; ++i) {
            const auto start = std::chrono::steady_clock::now();
            f();
            on.synchronize();
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          }
          std::sort(times.begin(), times.end());
          return times[times.size() / 2];
        };
        return std::max(host_median(fn) - host_median([] {}), 1e-9);
      };
      const std::string both_shape = "4 GEMMs + " + shape;
      row_flops("fwd GEMMs, then adamw", both_shape, timed(be, [&] {
                  forward(be);
                  be.adamw(param, grad, m, v, spec, copy);
                }),
                gemm_flops);
      for (const int sms : {16, 32, 48}) {
        CudaBackendOptions partitioned = cuda_options;
        partitioned.side_queue_sms = sms;
        partitioned.side_queue_chunked = false;
        const std::unique_ptr<Backend> part = make_cuda_backend(0, partitioned);
        part->reserve_scratch(bounds);
        auto update_beside = [&] { (void)part->run_on_side_queue([&] { part->adamw(param, grad, m, v, spec, copy); }); };
        const std::string on = " on " + std::to_string(sms) + " SMs";
        row_bytes("adamw" + on, shape, timed(*part, update_beside), bytes);
        row_flops("fwd GEMMs | adamw" + on, both_shape, timed(*part, [&] {
                    update_beside();
                    forward(*part);
                  }),
                  gemm_flops);
      }
      {  // What the GEMMs' SM count target gains: the same at 32 SMs, the GEMMs planned for every SM.
        CudaBackendOptions untargeted = cuda_options;
        untargeted.side_queue_sms = 32;
        untargeted.side_queue_chunked = false;
        untargeted.partition_gemms = false;
        const std::unique_ptr<Backend> part = make_cuda_backend(0, untargeted);
        part->reserve_scratch(bounds);
        row_flops("fwd GEMMs | adamw on 32 SMs, GEMMs for all", both_shape, timed(*part, [&] {
                    (void)part->run_on_side_queue([&] { part->adamw(param, grad, m, v, spec, copy); });
                    forward(*part);
                  }),
                  gemm_flops);
      }
    }
    // The result comes back to the host (a copy and a wait each call): that overhead, a
    // 1-element call's time, is taken off before the rate.
    const double all = median_seconds(be, [&](int) { (void)be.sum_squares(grad); }, iters);
    const double one = median_seconds(be, [&](int) { (void)be.sum_squares(reshape(grad, {1})); }, iters);
    row_bytes("sum_squares", shape, std::max(all - one, 1e-9), static_cast<double>(p * static_cast<int64_t>(es)));
    std::printf("# sum_squares: less a 1-element call's %.3f ms (the result's copy to the host and the wait)\n", one * 1e3);
  }
  if (vocab > 0) {
    std::mt19937_64 rng(7);
    std::vector<int32_t> ids(static_cast<size_t>(rows)), types(static_cast<size_t>(rows)), labels(static_cast<size_t>(rows));
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
    for (int64_t r = 0; r < rows; ++r) {
      ids[static_cast<size_t>(r)] = token(rng), labels[static_cast<size_t>(r)] = token(rng);
      types[static_cast<size_t>(r)] = (r % seq) < seq / 2 ? 0 : 1;  // two segments a sequence, as BERT's pairs
    }
    DeviceBuffer d_ids(be, ids.size() * 4), d_types(be, types.size() * 4), d_labels(be, labels.size() * 4);
    be.copy_from_host(d_ids.data(), ids.data(), ids.size() * 4);
    be.copy_from_host(d_types.data(), types.data(), types.size() * 4);
    be.copy_from_host(d_labels.data(), labels.data(), labels.size() * 4);
    const Tensor tok = buffer(t, vocab * hidden), pos = buffer(t, seq * hidden), type = token_types ? buffer(t, 2 * hidden) : Tensor{};
    const Tensor d_out = reshape(x, {rows, hidden});
    // d_out read once; each table row it touches read and written once.
    const double touched = static_cast<double>(std::set<int32_t>(ids.begin(), ids.end()).size() + seq + (token_types ? 2 : 0));
    row_bytes(token_types ? "embedding backward (3)" : "embedding backward (2)",
              std::to_string(rows) + "x" + std::to_string(hidden),
              median_seconds(be,
                             [&](int) {
                               be.embedding_backward(reshape(tok, {vocab, hidden}), reshape(pos, {seq, hidden}),
                                                     token_types ? reshape(type, {2, hidden}) : Tensor{}, d_out,
                                                     d_ids.int_view({rows}), d_types.int_view({rows}), seq);
                             },
                             iters),
              static_cast<double>(es * hidden) * (static_cast<double>(rows) + 2 * touched));
    const Tensor logits = buffer(t, rows * vocab), losses = buffer(t, rows);  // losses in the logits' dtype
    // The logits read (twice at most; counted once) and the gradient written over them.
    row_bytes("cross_entropy", std::to_string(rows) + "x" + std::to_string(vocab),
              median_seconds(be,
                             [&](int) {
                               be.cross_entropy(losses, reshape(logits, {rows, vocab}), reshape(logits, {rows, vocab}),
                                                d_labels.int_view({rows}), 1.0);
                             },
                             iters),
              2.0 * static_cast<double>(es * rows * vocab));
  }
  std::printf("# GEMMs of a layer together (forward): %.2f %s; streaming add %.2f GB/s\n",
              layer_gemm_gflops * 1e9 / flop_unit, flop_name, stream_gbs);
  if (!json_path.empty())
    std::ofstream(json_path) << nlohmann::json{{"backend", be.name()}, {"dtype", dtype_name(t)}, {"ops", table},
                                               {"layer_gemm_gflops", layer_gemm_gflops}, {"stream_gbs", stream_gbs}}
                                    .dump(1)
                             << '\n';
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mics-bench-ops: %s\n", e.what());
  return 1;
}
