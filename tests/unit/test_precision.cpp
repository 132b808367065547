// train.precision "auto": what it resolves to per backend and GPU generation, and that an
// explicit half precision on the CPU backend is still refused.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/config.h"
#include "kernels/cuda/cuda_backend.h"

namespace {

nlohmann::json tiny(const std::string& backend) {
  return {{"model", {{"type", "gpt"}, {"hidden", 32}, {"layers", 1}, {"heads", 2}, {"vocab_size", 64}}},
          {"train", {{"seq_len", 8}, {"micro_batch_size", 2}, {"steps", 1}, {"lr", 1e-3}}},
          {"runtime", {{"backend", backend}}}};
}

TEST(Precision, AutoFollowsTheGpuGeneration) {
  EXPECT_EQ(mics::auto_precision("cpu", 90), "fp32");
  EXPECT_EQ(mics::auto_precision("cuda", 70), "fp16");  // V100: no bf16
  EXPECT_EQ(mics::auto_precision("cuda", 75), "fp16");  // T4
  EXPECT_EQ(mics::auto_precision("cuda", 80), "bf16");  // A100
  EXPECT_EQ(mics::auto_precision("cuda", 90), "bf16");  // H100
  EXPECT_EQ(mics::auto_precision("cuda", 0), "bf16");   // planning without a GPU
}

TEST(Precision, AutoIsTheDefaultAndResolvesAtLoad) {
  const mics::Config cpu = mics::parse_config(tiny("cpu"), "tiny.json");
  EXPECT_EQ(cpu.train.precision, "fp32");
  EXPECT_EQ(cpu.train.precision_reason, "the CPU backend");
  EXPECT_EQ(cpu.to_json()["train"]["precision"], "fp32");  // the resolved value is what gets recorded

  const mics::Config gpu = mics::parse_config(tiny("cuda"), "tiny.json");
  if (mics::cuda_device_count() == 0) {
    EXPECT_EQ(gpu.train.precision, "bf16");
    EXPECT_EQ(gpu.train.precision_reason, "no GPU visible here");
  } else {
    EXPECT_EQ(gpu.train.precision, mics::auto_precision("cuda", mics::cuda_compute_capability(0)));
  }
}

TEST(Precision, ExplicitChoicesAreKeptAndHalfIsRefusedOnTheCpu) {
  nlohmann::json j = tiny("cuda");
  j["train"]["precision"] = "fp16";
  const mics::Config c = mics::parse_config(j, "tiny.json");
  EXPECT_EQ(c.train.precision, "fp16");
  EXPECT_TRUE(c.train.precision_reason.empty());

  j = tiny("cpu");
  j["train"]["precision"] = "bf16";
  try {
    mics::parse_config(j, "tiny.json");
    FAIL() << "bf16 on the CPU backend was accepted";
  } catch (const mics::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'train.precision' \"bf16\" needs 'runtime.backend' \"cuda\""),
              std::string::npos) << e.what();
  }
}

}  // namespace
