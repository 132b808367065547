// mics-bench-ops on the CPU backend at small shapes: every op's row in the table and the
// JSON (the keys scripts/sim-validate reads included), positive times and rates; a config's
// shapes and GELU; a dtype the backend lacks refused by name. (Its CUDA rows run in
// scripts/gpu_check.py's `ops` part.)
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::run_cli_command;
using mics::test::source_path;
using mics::test::TempDir;

std::string bench(const std::string& args) { return std::string("OMP_NUM_THREADS=1 ") + MICS_BENCH_OPS_BIN + " " + args + " 2>&1"; }

TEST(BenchOps, EveryOpTimedWithAPositiveRate) {
  TempDir dir("bench-ops");
  const std::string json = dir.file("ops.json");
  const auto r = run_cli_command(bench("--hidden 64 --rows 32 --vocab 50 --iters 2 --json " + json));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  EXPECT_GT(j.at("layer_gemm_gflops").get<double>(), 0.0);
  EXPECT_GT(j.at("stream_gbs").get<double>(), 0.0);
  std::set<std::string> ops;
  for (const auto& row : j.at("ops")) {
    const std::string op = row.at("op");
    ops.insert(op);
    EXPECT_GT(row.at("ms").get<double>(), 0.0) << op;
    const double rate = row.contains("gflops") ? row.at("gflops").get<double>() : row.at("gbs").get<double>();
    EXPECT_GT(rate, 0.0) << op;
  }
  for (const char* op : {"qkv", "proj", "fc", "fc2", "qkv backward", "fc2 backward, no bias", "qkv dW alone", "proj dX alone", "fc2 dW | dX, 2 streams", "fc + gelu tanh",
                         "fc2 backward + gelu tanh", "add", "layernorm forward", "add + layernorm forward",
                         "layernorm backward", "gelu tanh forward", "gelu tanh backward", "adamw", "sum_squares",
                         "embedding backward (2)", "cross_entropy"})
    EXPECT_TRUE(ops.count(op)) << op << " missing:\n" << r.output;
  EXPECT_NE(r.output.find("# cpu backend (fp32), M = 32 rows, C = 64, F = 256, V = 50"), std::string::npos) << r.output;
}

TEST(BenchOps, ShapesAndGeluFromAConfig) {
  const auto r = run_cli_command(bench("--config " + source_path("configs/bert-tiny.json") + " --iters 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gelu erf backward"), std::string::npos) << r.output;  // BERT's GELU
  EXPECT_NE(r.output.find("embedding backward (3)"), std::string::npos) << r.output;  // with token types
}

TEST(BenchOps, ADtypeTheBackendLacksIsRefused) {
  const auto r = run_cli_command(bench("--dtype bf16 --iters 1"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("does not compute in bf16 (--dtype)"), std::string::npos) << r.output;
}

}  // namespace
