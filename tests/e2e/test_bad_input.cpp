// Bad configs, flags and data files: each exits non-zero with one sentence that names the
// key, flag or file at fault.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::run_cli;
using mics::test::source_path;
using mics::test::TempDir;
using nlohmann::json;

json tiny_gpt() {
  std::ifstream in(source_path("configs/gpt-tiny.json"));
  return json::parse(in);
}

struct BadConfig {
  const char* name;
  void (*edit)(json&);
  const char* expected;  // a fragment the error message must contain
};

const BadConfig kBadConfigs[] = {
    {"unknown_key", [](json& c) { c["model"]["hiden"] = 128; }, "unknown key 'model.hiden'"},
    {"unknown_section", [](json& c) { c["optimizer"] = json::object(); }, "unknown section 'optimizer'"},
    {"wrong_type", [](json& c) { c["train"]["lr"] = "fast"; }, "'train.lr' must be a number, got a string"},
    {"fractional_integer", [](json& c) { c["model"]["hidden"] = 128.5; }, "'model.hidden' must be an integer"},
    {"heads_not_dividing_hidden", [](json& c) { c["model"]["heads"] = 5; },
     "'model.heads' (5) must divide 'model.hidden' (128)"},
    {"zero_layers", [](json& c) { c["model"]["layers"] = 0; }, "'model.layers' must be a positive integer"},
    {"negative_lr", [](json& c) { c["train"]["lr"] = -1e-3; }, "'train.lr' must be a positive number"},
    {"seq_beyond_positions", [](json& c) { c["train"]["seq_len"] = 256; },
     "'train.seq_len' (256) is longer than 'model.max_positions' (128)"},
    {"unknown_enum", [](json& c) { c["train"]["lr_decay"] = "exponential"; },
     "'train.lr_decay' is \"exponential\"; accepted values are \"constant\", \"linear\", \"cosine\""},
    {"dropout_out_of_range", [](json& c) { c["model"]["dropout"] = 1.5; }, "'model.dropout' must be in [0, 1)"},
    {"missing_required", [](json& c) { c["model"].erase("vocab_size"); }, "'model.vocab_size'"},
    {"section_not_object", [](json& c) { c["train"] = 3; }, "section 'train' must be a JSON object"},
    {"bf16_on_cpu", [](json& c) { c["train"]["precision"] = "bf16"; }, "'train.precision' \"bf16\" needs 'runtime.backend' \"cuda\""},
    {"partition_not_dividing_world", [](json& c) { c["mics"]["partition_size"] = 8; },
     "'mics.partition_size' (8) must divide the number of ranks (1)"},
    {"batch_not_multiple", [](json& c) { c["train"]["global_batch_size"] = 12; },
     "'train.global_batch_size' (12) must be a multiple of 'train.micro_batch_size' (8)"},
    {"cuda_backend_not_built", [](json& c) { c["runtime"]["backend"] = "cuda"; },
     "'runtime.backend' \"cuda\" is not available in this build"},
    {"path_without_source", [](json& c) { c["data"] = {{"path", "/tmp"}}; }, "'data.path' is set but 'data.source' is \"synthetic\""},
    {"gpt_type_vocab", [](json& c) { c["model"]["type_vocab_size"] = 2; }, "'model.type_vocab_size' must be 0 for GPT"},
};

class BadConfigTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadConfigTest, ExitsNonZeroNamingTheKey) {
  TempDir dir("badcfg");
  json c = tiny_gpt();
  GetParam().edit(c);
  const std::string path = dir.write("config.json", c.dump(2));
  const auto r = run_cli("--config " + path + " --steps 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(GetParam().expected), std::string::npos) << r.output;
  // One sentence, not a stack of them.
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

INSTANTIATE_TEST_SUITE_P(Configs, BadConfigTest, ::testing::ValuesIn(kBadConfigs),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(BadInput, InvalidJsonNamesTheFile) {
  TempDir dir("badjson");
  const std::string path = dir.write("broken.json", "{\"model\": {\"type\": \"gpt\",, }");
  const auto r = run_cli("--config " + path);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(path + " is not valid JSON"), std::string::npos) << r.output;
}

TEST(BadInput, MissingConfigFile) {
  const auto r = run_cli("--config /nonexistent/run.json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/nonexistent/run.json"), std::string::npos) << r.output;
}

TEST(BadInput, MalformedSetFlag) {
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --set train.lr");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--set 'train.lr' must have the form key.path=value"), std::string::npos) << r.output;
}

TEST(BadInput, SetOverridesAreValidatedLikeTheFile) {
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --set train.warmup=5");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unknown key 'train.warmup'"), std::string::npos) << r.output;
}

TEST(BadInput, UnknownFlag) {
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --stpes 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--stpes"), std::string::npos) << r.output;
}

// ---- data files ----

std::string shard_bytes(int32_t magic, int32_t version, int32_t declared, int32_t actual) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = declared;
  std::string bytes(reinterpret_cast<const char*>(header.data()), header.size() * 4);
  std::vector<uint16_t> tokens(static_cast<size_t>(actual), 7);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  return bytes;
}

struct BadData {
  const char* name;
  const char* source;
  std::string (*make)(const TempDir&);  // returns the data path
};

const BadData kBadData[] = {
    {"missing_text", "text", [](const TempDir& d) { return d.file("no-such-corpus.txt"); }},
    {"empty_text", "text", [](const TempDir& d) { return d.write("empty.txt", ""); }},
    {"text_shorter_than_a_window", "text", [](const TempDir& d) { return d.write("short.txt", "too short"); }},
    {"shard_wrong_magic", "shards", [](const TempDir& d) { return d.write("magic.bin", shard_bytes(1234, 1, 500, 500)); }},
    {"shard_truncated", "shards", [](const TempDir& d) { return d.write("cut.bin", shard_bytes(20240520, 1, 500, 300)); }},
    {"shard_truncated_header", "shards", [](const TempDir& d) { return d.write("head.bin", std::string(100, 'x')); }},
    {"shard_wrong_version", "shards", [](const TempDir& d) { return d.write("ver.bin", shard_bytes(20240520, 9, 500, 500)); }},
    {"glob_matching_nothing", "shards", [](const TempDir& d) { return d.file("train_*.bin"); }},
};

class BadDataTest : public ::testing::TestWithParam<BadData> {};

TEST_P(BadDataTest, ExitsNonZeroNamingTheFile) {
  TempDir dir("baddata");
  const std::string path = GetParam().make(dir);
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --steps 1 --set data.source=" +
                         GetParam().source + " --set data.path=" + path);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(DataFiles, BadDataTest, ::testing::ValuesIn(kBadData),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(BadInput, ShardTokensBeyondTheVocabulary) {
  TempDir dir("vocab");
  std::string bytes = shard_bytes(20240520, 1, 1000, 0);
  std::vector<uint16_t> tokens(1000, 300);  // gpt-tiny's vocabulary is 256
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  const std::string path = dir.write("big.bin", bytes);
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") +
                         " --steps 1 --set data.source=shards --set data.path=" + path);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("holds token ids up to 300, beyond 'model.vocab_size' (256)"), std::string::npos) << r.output;
}

TEST(GoodInput, ShardsTrain) {
  TempDir dir("shards");
  std::string bytes = shard_bytes(20240520, 1, 4000, 0);
  std::vector<uint16_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 7) % 256);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  const std::string path = dir.write("train_000.bin", bytes);
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") +
                         " --steps 2 --set data.source=shards --set data.path=" + dir.file("train_*.bin"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace
