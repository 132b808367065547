// Hugging Face interchange: export writes BertForMaskedLM / GPT2LMHeadModel names and
// layouts; --init-from reads them back; the round trip is bit-identical. Bad weight files
// are in the bad-input survey, tests/e2e/test_bad_input_survey.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/safetensors.h"
#include "tests/e2e/cli_runner.h"

namespace {

namespace fs = std::filesystem;
using mics::test::run_cli;
using mics::test::source_path;
using mics::test::TempDir;

std::string shape_args(const std::string& model) {
  return "--config " + source_path("configs/" + model + "-tiny.json") +
         " --set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64 --set model.layers=2"
         " --set train.global_batch_size=8 --log-level warn";
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Trains 3 steps and exports; returns the exported file.
std::string trained_export(const TempDir& dir, const std::string& model, const std::string& format) {
  EXPECT_EQ(run_cli(shape_args(model) + " --steps 3 --set checkpoint.dir=" + dir.file("ck")).exit_code, 0);
  const std::string out = dir.file(format == "hf" ? "hf" : "model.safetensors");
  const auto r = run_cli("export --checkpoint " + dir.file("ck/step-000003") + " --out " + out + " --format " + format);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

TEST(Interchange, ExportImportRoundTripIsBitIdentical) {
  for (const std::string model : {"gpt", "bert"}) {
    TempDir dir("hf");
    const std::string folder = trained_export(dir, model, "hf");
    ASSERT_TRUE(fs::exists(folder + "/config.json"));
    // Start from the exported weights; an update too small to change any fp32 value.
    const auto r = run_cli(shape_args(model) + " --steps 1 --init-from " + folder + " --set checkpoint.dir=" +
                           dir.file("ck2") + " --set train.lr=1e-30 --set train.min_lr=0 --set train.warmup_steps=0"
                           " --set train.weight_decay=0");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(run_cli("export --checkpoint " + dir.file("ck2/step-000001") + " --out " + dir.file("again.safetensors")).exit_code, 0);
    EXPECT_EQ(bytes_of(folder + "/model.safetensors"), bytes_of(dir.file("again.safetensors"))) << model;
  }
}

TEST(Interchange, UsesHuggingFaceNamesAndLayouts) {
  TempDir dir("hfnames");
  const auto gpt = mics::read_safetensors(trained_export(dir, "gpt", "safetensors"));
  EXPECT_EQ(gpt.at("transformer.wte.weight").shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(gpt.at("transformer.h.1.attn.c_attn.weight").shape, (std::vector<int64_t>{64, 192}));  // Conv1D [in, out]
  EXPECT_EQ(gpt.at("transformer.h.0.mlp.c_proj.weight").shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(gpt.count("lm_head.weight"), 0u);  // tied to wte
  TempDir dir2("hfnames2");
  const auto bert = mics::read_safetensors(trained_export(dir2, "bert", "safetensors"));
  EXPECT_EQ(bert.at("bert.encoder.layer.0.attention.self.key.weight").shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(bert.at("cls.predictions.bias").shape, (std::vector<int64_t>{260}));
  EXPECT_EQ(bert.at("bert.embeddings.token_type_embeddings.weight").shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(bert.size(), 5u + 2 * 16 + 5);
}

}  // namespace
