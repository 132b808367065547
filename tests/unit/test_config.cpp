// Config refusals that name the key, the value and the --set that gave it, for the inputs
// a hand-written config or a shell can produce; the run-level survey of bad input is in
// tests/e2e/test_bad_input_survey.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/config.h"

namespace {

const std::string kGptTiny = std::string(MICS_SOURCE_DIR) + "/configs/gpt-tiny.json";
const std::string kBertTiny = std::string(MICS_SOURCE_DIR) + "/configs/bert-tiny.json";

// The ConfigError `load_config` throws ("" when it accepts).
std::string refusal(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    mics::load_config(path, overrides);
  } catch (const mics::ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string write_config(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("mics-config-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(path) << text;
  return path.string();
}

#define EXPECT_REFUSED(message, fragment) \
  EXPECT_NE((message).find(fragment), std::string::npos) << "message: " << (message) << "\nexpected: " << (fragment)

TEST(Config, AMissingModelTypeIsSaidToBeRequired) {
  const std::string path = write_config("no-type.json", R"({"model": {"hidden": 64, "layers": 2, "heads": 4,
      "vocab_size": 256}, "train": {"seq_len": 32, "lr": 0.001, "steps": 3, "micro_batch_size": 2}})");
  EXPECT_REFUSED(refusal(path), path + ": 'model.type' is required; accepted values are \"bert\", \"gpt\".");
  std::filesystem::remove(path);
}

// nlohmann's own exceptions (a number beyond a double, bytes that are not UTF-8) come out as
// the one sentence every other refusal is, not as a failed rank (exit 1).
TEST(Config, NumbersOutOfRangeAndBytesThatAreNotUtf8AreRefusedByName) {
  const std::string path = write_config("overflow.json", R"({"model": {"type": "gpt"}, "train": {"lr": 1e400}})");
  EXPECT_REFUSED(refusal(path), path + " cannot be read as a config: number overflow parsing '1e400'.");
  std::filesystem::remove(path);
  EXPECT_REFUSED(refusal(kGptTiny, {"model.hidden=\xff"}), "--set 'model.hidden=...': the value is not valid UTF-8.");
}

TEST(Config, RefusalsCausedByASetNameIt) {
  EXPECT_REFUSED(refusal(kGptTiny, {"data.mask_prob=0.2"}),
                 "'data.mask_prob' applies to BERT only; GPT predicts every next token (from --set data.mask_prob=0.2).");
  EXPECT_REFUSED(refusal(kBertTiny, {"train.lr=1e-5"}),
                 "'train.min_lr' (0.0002) must be in [0, 'train.lr' (1e-05)] (from --set train.lr=1e-5).");
  EXPECT_REFUSED(refusal(kBertTiny, {"model.type=gpt"}),
                 "'data.mask_token_id' applies to BERT only; 'model.type' is \"gpt\" (from --set model.type=gpt).");
}

TEST(Config, OnlyTheDocumentedDefaultsStandForAValue) {
  EXPECT_REFUSED(refusal(kGptTiny, {"model.type_vocab_size=-7"}), "'model.type_vocab_size' must be 0 for GPT");
  EXPECT_REFUSED(refusal(kBertTiny, {"model.type_vocab_size=-2"}), "'model.type_vocab_size' must be at least 1 for BERT");
  EXPECT_REFUSED(refusal(kGptTiny, {"model.layernorm_eps=0"}), "'model.layernorm_eps' must be positive (got 0.0)");
  EXPECT_EQ(mics::load_config(kGptTiny).model.layernorm_eps, 1e-5);
  EXPECT_EQ(mics::load_config(kBertTiny).model.type_vocab_size, 2);
}

TEST(Config, BoundsThatKeepARunSane) {
  EXPECT_REFUSED(refusal(kGptTiny, {"mics.prefetch=5"}), "'mics.prefetch' (5) is more than 'model.layers' (4)");
  EXPECT_EQ(refusal(kGptTiny, {"mics.prefetch=4"}), "");
  EXPECT_REFUSED(refusal(kGptTiny, {"runtime.comm_timeout_s=0.5"}), "'runtime.comm_timeout_s' must be at least 1 second (got 0.5)");
  EXPECT_EQ(refusal(kGptTiny, {"runtime.comm_timeout_s=1"}), "");
}

}  // namespace
