// Hugging Face interchange: export writes BertForMaskedLM / GPT2LMHeadModel names and
// layouts; --init-from reads them back; the round trip is bit-identical. Bad weight files,
// config.json files and export targets are in the bad-input survey,
// tests/e2e/test_bad_input_survey.cpp.
#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <sys/resource.h>

#include "engine/hf_interchange.h"
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

// A tied copy that other tools store (an untied head) is taken when it equals the tensor
// ours ties it to, and refused, naming it, when it differs by one bit.
TEST(Interchange, TiedCopiesAreTakenOnlyWhenBitEqual) {
  struct Tie {
    std::string model, copy, of;
  };
  for (const Tie& tie : {Tie{"gpt", "lm_head.weight", "transformer.wte.weight"},
                         Tie{"bert", "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"},
                         Tie{"bert", "cls.predictions.decoder.bias", "cls.predictions.bias"}}) {
    SCOPED_TRACE(tie.copy);
    TempDir dir("hftie");
    auto tensors = mics::read_safetensors(trained_export(dir, tie.model, "safetensors"));
    tensors[tie.copy] = tensors.at(tie.of);
    const std::string path = dir.file("tied.safetensors");
    mics::write_safetensors(path, tensors, {});
    const std::string run = shape_args(tie.model) + " --steps 1 --init-from ";
    auto r = run_cli(run + path);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    uint32_t bits;
    std::memcpy(&bits, &tensors[tie.copy].values[3], 4);
    bits ^= 1;  // the last bit of one value
    std::memcpy(&tensors[tie.copy].values[3], &bits, 4);
    mics::write_safetensors(path, tensors, {});
    r = run_cli(run + path);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(path + " holds '" + tie.copy + "', which differs from '" + tie.of + "'"), std::string::npos)
        << r.output;
  }
}

// A config.json beside the weights that describes the run's model is taken, keys left out
// standing for transformers' defaults; a setting that changes nothing computed is a warning.
TEST(Interchange, ConfigBesideTheWeightsThatMatchesIsTaken) {
  TempDir dir("hfcfg");
  const std::string folder = trained_export(dir, "gpt", "hf");
  std::ofstream(folder + "/config.json") << R"({"model_type": "gpt2", "vocab_size": 256, "n_embd": 64, "n_layer": 2,
      "n_head": 4, "n_positions": 32, "n_inner": null, "activation_function": "gelu_pytorch_tanh",
      "reorder_and_upcast_attn": true, "tie_word_embeddings": false, "resid_pdrop": 0.3})";
  const auto r = run_cli(shape_args("gpt") + " --steps 1 --init-from " + folder);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("'reorder_and_upcast_attn' is true"), std::string::npos) << r.output;
}

// A weight file whose folder holds some other config.json (a mics-train run's) is taken with
// a warning; the same file in the folder form (--init-from FOLDER) is refused.
TEST(Interchange, AConfigWithoutModelTypeBesideAFileIsNotChecked) {
  TempDir dir("hfruncfg");
  const std::string folder = trained_export(dir, "gpt", "hf");
  std::filesystem::copy_file(source_path("configs/gpt-tiny.json"), folder + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto r = run_cli(shape_args("gpt") + " --steps 1 --init-from " + folder + "/model.safetensors");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(folder + "/config.json has no 'model_type', so it is not a Hugging Face config.json; the "
                                   "weights are not checked against it"),
            std::string::npos)
      << r.output;
  r = run_cli(shape_args("gpt") + " --steps 1 --init-from " + folder);
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// The exported config's token ids lie inside the vocabulary (GPT2Config would otherwise
// fill in 50256, and generate() pad with it).
TEST(Interchange, ExportedTokenIdsAreInTheVocabulary) {
  mics::model::ModelSpec spec;
  spec.arch = mics::model::Arch::gpt;
  spec.vocab = 256;
  EXPECT_EQ(mics::hf_config(spec).value("bos_token_id", -1), 255);
  EXPECT_EQ(mics::hf_config(spec).value("eos_token_id", -1), 255);
  spec.vocab = 50304;  // GPT-2's 50257 padded: end-of-text is 50256
  EXPECT_EQ(mics::hf_config(spec).value("bos_token_id", -1), 50256);
  EXPECT_EQ(mics::hf_config(spec).value("eos_token_id", -1), 50256);
  spec.arch = mics::model::Arch::bert;
  spec.vocab = 8;
  // BERT's config leaves pad_token_id out: transformers' default, 0, lies in any vocabulary.
  EXPECT_FALSE(mics::hf_config(spec).contains("pad_token_id"));
}

// config.json on a full disk (here: a file size limit) is an error naming it, and leaves
// neither a short config.json nor its temporary file.
TEST(Interchange, ConfigWriteFailureIsAnErrorNamingTheFile) {
  TempDir dir("hffull");
  const std::string path = dir.file("config.json");
  mics::model::ModelSpec spec;
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit small = saved;
  small.rlim_cur = 100;  // bytes; config.json is several hundred
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    mics::write_hf_config(path, spec);
  } catch (const std::exception& e) {
    error = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(error.find("writing " + path + " failed"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

}  // namespace
