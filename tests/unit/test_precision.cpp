// The settings that resolve at load: train.precision "auto" (per backend and GPU
// generation; an explicit half precision on the CPU backend is still refused) and
// runtime.attention "auto" (cuDNN's fused attention wherever it runs).
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

TEST(AttentionChoice, AutoTakesCudnnWhereItRunsAndSaysWhyNotElsewhere) {
  // The tiny model: 2 heads of 16.
  nlohmann::json j = tiny("cuda");
  j["train"]["precision"] = "bf16";
  const bool old_gpu = mics::cuda_device_count() > 0 && mics::cuda_compute_capability(0) < 80;
  mics::Config c = mics::parse_config(j, "tiny.json");
  EXPECT_EQ(c.runtime.attention, old_gpu ? "materialized" : "cudnn") << c.runtime.attention_reason;
  EXPECT_EQ(c.to_json()["runtime"]["attention"], c.runtime.attention);  // recorded resolved

  const auto materialized_because = [](const nlohmann::json& config, const std::string& reason) {
    const mics::Config r = mics::parse_config(config, "tiny.json");
    EXPECT_EQ(r.runtime.attention, "materialized") << reason;
    EXPECT_EQ(r.runtime.attention_reason, reason);
  };
  materialized_because(tiny("cpu"), "the CPU backend");
  nlohmann::json k = j;
  k["train"]["precision"] = "fp32";
  materialized_because(k, "'train.precision' \"fp32\"");
  k = j;
  k["model"]["heads"] = 8;  // head dimension 4
  materialized_because(k, "head dimension 4");
  k = j;
  k["model"]["attention_dropout"] = 0.1;
  materialized_because(k, "'model.attention_dropout' set: cuDNN draws its own dropout mask");

  // A long sequence: cuDNN's deterministic backward would need 8 x 2 x 8192 x (2 x 8192 + 4)
  // bytes (2048.5 MiB) plus its 16 MiB of headroom, 2064 MiB, over its 1 GiB budget; ours
  // (head dimension 64) instead, else the materialised path.
  k = j;
  k["model"]["hidden"] = 128;
  k["model"]["max_positions"] = 8192;
  k["train"]["seq_len"] = 8192;
  k["train"]["micro_batch_size"] = 8;
  c = mics::parse_config(k, "tiny.json");
  EXPECT_EQ(c.runtime.attention, old_gpu ? "materialized" : "fused") << c.runtime.attention_reason;
  if (!old_gpu) {
    EXPECT_EQ(c.runtime.attention_reason,
              "cuDNN's deterministic backward would need about 2064 MiB of workspace, over its 1 GiB");
  }
  k["model"]["hidden"] = 32;  // head dimension 16: not ours either
  EXPECT_EQ(mics::parse_config(k, "tiny.json").runtime.attention, "materialized");
  // Unless the nondeterministic backward is asked for: its workspace is linear in T.
  k["model"]["hidden"] = 128;
  k["runtime"]["cudnn_deterministic"] = false;
  c = mics::parse_config(k, "tiny.json");
  EXPECT_EQ(c.runtime.attention, old_gpu ? "materialized" : "cudnn") << c.runtime.attention_reason;
  EXPECT_FALSE(c.runtime.cudnn_deterministic);
  EXPECT_EQ(c.to_json()["runtime"]["cudnn_deterministic"], old_gpu);  // kept in the checkpoint's config
  // Where "auto" takes another attention the key changes nothing, and the saved config
  // (which export and the log read back) says so rather than one that would be refused.
  k["train"]["precision"] = "fp32";
  c = mics::parse_config(k, "tiny.json");
  EXPECT_EQ(c.runtime.attention, "materialized");
  EXPECT_EQ(c.to_json()["runtime"]["cudnn_deterministic"], true);
  EXPECT_NO_THROW(mics::parse_config(c.to_json(), "saved config"));

  // An explicit choice is kept, without a reason.
  k = j;
  k["runtime"]["attention"] = "materialized";
  c = mics::parse_config(k, "tiny.json");
  EXPECT_EQ(c.runtime.attention, "materialized");
  EXPECT_TRUE(c.runtime.attention_reason.empty());
}

}  // namespace
