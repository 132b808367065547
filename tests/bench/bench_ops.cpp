// Backend benchmark: what one device of this machine sustains on the ops that dominate a
// training step, for the simulator's cluster files. GEMMs at a transformer layer's shapes
// (QKV, projection, FFN up and down for hidden C, FFN F and M = micro-batch x seq rows) in
// GFLOP/s, and a streaming op (out = a + b) in GB/s of bytes read and written. Medians over
// iterations.
//   OMP_NUM_THREADS=1 build/mics-bench-ops --hidden 256 --ffn 1024 --rows 512 [--json out.json]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/ops.h"

namespace {

using namespace mics;

double median_seconds(const std::function<void()>& op, int iters) {
  op();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    op();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mics-bench-ops: GEMM and streaming throughput of the CPU backend"};
  int64_t hidden = 256, ffn = 0, rows = 512;
  int iters = 20;
  std::string json_path;
  app.add_option("--hidden", hidden, "hidden size C")->check(CLI::PositiveNumber);
  app.add_option("--ffn", ffn, "FFN size F (default 4C)");
  app.add_option("--rows", rows, "rows M = micro-batch x sequence length")->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "timed runs per op")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "also write the table as JSON");
  CLI11_PARSE(app, argc, argv);
  if (ffn <= 0) ffn = 4 * hidden;

  auto backend = make_cpu_backend();
  Backend& be = *backend;
  struct Gemm {
    const char* name;
    int64_t n, k;
  };
  const std::vector<Gemm> gemms = {{"qkv", 3 * hidden, hidden}, {"proj", hidden, hidden},
                                   {"fc", ffn, hidden}, {"fc2", hidden, ffn}};
  const int64_t widest = std::max(3 * hidden, ffn);
  DeviceBuffer in(be, sizeof(float) * rows * widest), w(be, sizeof(float) * widest * widest),
      out(be, sizeof(float) * rows * widest);
  std::vector<float> host(static_cast<size_t>(widest * widest));
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
  be.copy_from_host(w.data(), host.data(), sizeof(float) * host.size());
  be.copy_from_host(in.data(), host.data(), sizeof(float) * static_cast<size_t>(std::min(rows * widest, widest * widest)));

  nlohmann::json table = nlohmann::json::array();
  std::printf("# CPU backend (fp32), M = %lld rows, C = %lld, F = %lld\n", static_cast<long long>(rows),
              static_cast<long long>(hidden), static_cast<long long>(ffn));
  std::printf("# %-8s %-20s %12s %12s\n", "op", "shape", "median ms", "rate");
  double flops_total = 0, seconds_total = 0;
  for (const Gemm& g : gemms) {
    Tensor x = in.view(DType::f32, {rows, g.k}), wt = w.view(DType::f32, {g.n, g.k}), y = out.view(DType::f32, {rows, g.n});
    const double t = median_seconds([&] { be.linear_forward(y, x, wt, Tensor{}); }, iters);
    const double flops = 2.0 * static_cast<double>(rows * g.n * g.k);
    flops_total += flops;
    seconds_total += t;
    char shape[64];
    std::snprintf(shape, sizeof shape, "%lldx%lldx%lld", static_cast<long long>(rows), static_cast<long long>(g.n),
                  static_cast<long long>(g.k));
    std::printf("  %-8s %-20s %12.3f %9.2f GFLOP/s\n", g.name, shape, t * 1e3, flops / t / 1e9);
    table.push_back({{"op", g.name}, {"shape", shape}, {"ms", t * 1e3}, {"gflops", flops / t / 1e9}});
  }
  const int64_t n = rows * widest;
  Tensor a = in.view(DType::f32, {n}), b = out.view(DType::f32, {n});
  const double t_add = median_seconds([&] { be.add(b, a, b); }, iters);
  const double gbs = 3.0 * sizeof(float) * static_cast<double>(n) / t_add / 1e9;
  std::printf("  %-8s %-20lld %12.3f %9.2f GB/s\n", "add", static_cast<long long>(n), t_add * 1e3, gbs);
  std::printf("# GEMMs of a layer together: %.2f GFLOP/s\n", flops_total / seconds_total / 1e9);
  table.push_back({{"op", "add"}, {"elements", n}, {"ms", t_add * 1e3}, {"gbs", gbs}});
  if (!json_path.empty())
    std::ofstream(json_path) << nlohmann::json{{"ops", table}, {"layer_gemm_gflops", flops_total / seconds_total / 1e9},
                                               {"stream_gbs", gbs}}.dump(1) << '\n';
  return 0;
}
