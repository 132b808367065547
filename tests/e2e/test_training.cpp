// End-to-end training through the mics-train binary: determinism, learning on real text,
// the metrics file, and the dry run of the large configs.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <regex>

#include "engine/comm/nccl_communicator.h"
#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::read_losses;
using mics::test::read_metrics;
using mics::test::run_cli;
using mics::test::source_path;
using mics::test::TempDir;

// 20 steps of a tiny config, every step logged; returns the per-step losses.
std::vector<double> train_tiny(const char* config, const TempDir& dir, const std::string& name, int seed,
                               const std::string& extra = "") {
  const std::string metrics = dir.file(name);
  const auto r = run_cli("--config " + source_path(config) +
                         " --steps 20 --set log.every=1 --set train.global_batch_size=8"
                         " --set train.seed=" + std::to_string(seed) + " --metrics " + metrics +
                         " --log-level warn" + extra);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return read_losses(metrics);
}

std::vector<double> train_gpt_tiny(const TempDir& dir, const std::string& name, int seed,
                                   const std::string& extra = "") {
  return train_tiny("configs/gpt-tiny.json", dir, name, seed, extra);
}

// `variant`'s 20 losses against `reference`'s: equal bits (relative 0) or within `relative`.
void expect_tracks(const std::vector<double>& variant, const std::vector<double>& reference, double relative) {
  ASSERT_EQ(reference.size(), 20u);
  ASSERT_EQ(variant.size(), 20u);
  for (size_t i = 0; i < reference.size(); ++i) {
    if (relative == 0) {
      EXPECT_EQ(variant[i], reference[i]) << "step " << i + 1;
    } else {
      EXPECT_NEAR(variant[i], reference[i], relative * std::abs(reference[i])) << "step " << i + 1;
    }
  }
}

TEST(Training, SameSeedGivesIdenticalLossesBitForBit) {
  TempDir dir("determinism");
  const auto a = train_gpt_tiny(dir, "a.jsonl", 11);
  const auto b = train_gpt_tiny(dir, "b.jsonl", 11);
  const auto c = train_gpt_tiny(dir, "c.jsonl", 12);
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  ASSERT_EQ(c.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;  // exact
  int differing = 0;
  for (size_t i = 0; i < a.size(); ++i) differing += a[i] != c[i];
  EXPECT_EQ(differing, 20) << "another seed must change every step's loss";
}

// The step's loss is the mean over every labelled position of the global batch. BERT masks a
// different number of positions in each micro-batch, so a mean of the micro-batches' means
// would move with the split (1e-4 relative at step 1 between micro-batch 8 and 2); the
// global mean is the same loss and gradient whatever the micro-batch, up to fp32 summation.
TEST(Training, BertsLossIsTheSameWhateverTheMicroBatch) {
  TempDir dir("bert_micro");
  const auto eight = train_tiny("configs/bert-tiny.json", dir, "eight.jsonl", 5, " --set train.micro_batch_size=8");
  const auto two = train_tiny("configs/bert-tiny.json", dir, "two.jsonl", 5, " --set train.micro_batch_size=2");
  expect_tracks(two, eight, 1e-6);
}

// train.activation_checkpointing recomputes each block in backward with the same ops and
// dropout seeds: the run is bit-identical to keeping every activation.
TEST(Training, ActivationCheckpointingGivesIdenticalLosses) {
  TempDir dir("checkpointing");
  const std::string dropout = " --set model.dropout=0.1 --set model.attention_dropout=0.1";
  const auto kept = train_gpt_tiny(dir, "kept.jsonl", 5, dropout);
  const auto recomputed =
      train_gpt_tiny(dir, "recomputed.jsonl", 5, dropout + " --set train.activation_checkpointing=true");
  expect_tracks(recomputed, kept, 0);
}

// BERT (post-LN) likewise, recomputing each block whole, or (train.keep_ffn_output) up to its
// FFN's GELU with its second LayerNorm's input kept.
TEST(Training, BertActivationCheckpointingGivesIdenticalLossesWithOrWithoutItsFfnOutputKept) {
  TempDir dir("bert-checkpointing");
  const std::string dropout = " --set model.dropout=0.1 --set model.attention_dropout=0.1";
  const auto kept = train_tiny("configs/bert-tiny.json", dir, "kept.jsonl", 5, dropout);
  const std::string ckpt = dropout + " --set train.activation_checkpointing=true";
  expect_tracks(train_tiny("configs/bert-tiny.json", dir, "whole.jsonl", 5, ckpt), kept, 0);
  expect_tracks(train_tiny("configs/bert-tiny.json", dir, "ffn.jsonl", 5, ckpt + " --set train.keep_ffn_output=true"),
                kept, 0);
}

// runtime.overlap_optimizer defers each layer's update to its first use in the next step:
// on the CPU it runs there, the same arithmetic on the same values, so the losses are the
// same bits; a use that did not ask for its layer's update would train on stale weights.
TEST(Training, OverlappedOptimizerGivesIdenticalLosses) {
  TempDir dir("overlap");
  const auto at_once = train_gpt_tiny(dir, "at_once.jsonl", 3);
  const auto deferred = train_gpt_tiny(dir, "deferred.jsonl", 3, " --set runtime.overlap_optimizer=true");
  expect_tracks(deferred, at_once, 0);
}

// Fused attention runs the same forward (bit for bit: the same kernels, only the saved
// tensor differs) and a backward that recomputes the probabilities from each row's
// log-sum-exp: its gradients differ by fp32 rounding, which 20 steps of training carry
// into the losses at the 1e-6 level.
TEST(Training, FusedAttentionTracksMaterialized) {
  TempDir dir("fused-attention");
  const std::string dropout = " --set model.dropout=0.1 --set model.attention_dropout=0.1";
  const auto kept = train_gpt_tiny(dir, "materialized.jsonl", 5, dropout);
  const auto fused = train_gpt_tiny(dir, "fused.jsonl", 5, dropout + " --set runtime.attention=fused");
  expect_tracks(fused, kept, 1e-5);
  if (!kept.empty() && !fused.empty()) {
    EXPECT_EQ(kept[0], fused[0]) << "the first forward is the same computation";
  }
}

// One rank's gradients are used in place (gradients_in_place): micro-steps add into the
// same fp32 buffer. Two micro-batches of 4 then train like one of 8, up to the order in
// which each gradient's terms are summed (fp32 rounding, carried by 20 steps into the losses
// at the 1e-6 level), and the log says where the gradients live.
TEST(Training, MicroStepsAccumulateInPlaceLikeOneBatch) {
  TempDir dir("accumulate");
  const auto whole = train_gpt_tiny(dir, "whole.jsonl", 7);
  const auto halves = train_gpt_tiny(dir, "halves.jsonl", 7, " --set train.micro_batch_size=4");
  expect_tracks(halves, whole, 1e-5);
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") +
                         " --steps 1 --set train.global_batch_size=8 --set train.micro_batch_size=4");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gradients used in place (fp32, one rank)"), std::string::npos) << r.output;
}

// Trains `config` on its real-text corpus; returns the mean of the last ten losses over
// the first loss.
double final_over_first_loss(const std::string& config, int steps) {
  TempDir dir("text");
  const std::string metrics = dir.file("m.jsonl");
  const auto r = run_cli("--config " + source_path(config) + " --steps " + std::to_string(steps) +
                         " --set log.every=1 --metrics " + metrics + " --log-level warn");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const auto loss = read_losses(metrics);
  if (loss.size() != static_cast<size_t>(steps)) {
    ADD_FAILURE() << "logged " << loss.size() << " of " << steps << " steps";
    return 1.0;
  }
  double tail = 0;
  for (size_t i = loss.size() - 10; i < loss.size(); ++i) tail += loss[i] / 10;
  return tail / loss.front();
}

TEST(Training, GptTinyLearnsRealText) {
  EXPECT_LT(final_over_first_loss("configs/gpt-tiny.json", 200), 0.7);
}

TEST(Training, BertTinyMaskedLmLossFalls) {
  EXPECT_LT(final_over_first_loss("configs/bert-tiny.json", 100), 0.7);
}

TEST(Training, MetricsFileHasEveryField) {
  TempDir dir("metrics");
  const std::string metrics = dir.file("m.jsonl");
  const auto r = run_cli("--config " + source_path("configs/bert-tiny.json") +
                         " --steps 4 --set log.every=2 --metrics " + metrics);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = read_metrics(metrics);
  ASSERT_EQ(rows.size(), 3u);  // steps 1, 2 and 4
  EXPECT_EQ(rows.back().at("step"), 4);
  for (const char* key : {"step", "loss", "lr", "grad_norm", "step_time_s", "samples_per_s",
                          "tokens_per_s", "tflops_per_device", "loss_scale", "optimizer_wait_s"}) {
    ASSERT_TRUE(rows.back().contains(key)) << key;
    EXPECT_TRUE(rows.back().at(key).is_number()) << key;
  }
  EXPECT_GT(rows.back().at("tflops_per_device").get<double>(), 0.0);
  // Rank 0's readable progress line and the resolved config are in the log.
  EXPECT_NE(r.output.find("step 4/4 | loss"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"layernorm_eps\":1e-12"), std::string::npos) << r.output;
}

// A metrics file that cannot be written to (a full disk: /dev/full) costs the metrics, not
// the run: one warning, and training goes on to its end.
TEST(Training, AMetricsFileThatFailsWarnsAndTrainingGoesOn) {
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") +
                         " --steps 3 --set log.every=1 --metrics /dev/full");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("writing the metrics file '/dev/full' failed at step 1 (No space left on device); training "
                          "goes on"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("step 3/3 | loss"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::is_character_file("/dev/full"));
}

// Data of fewer windows than a global batch trains (the order repeats), but says so once.
TEST(Training, DataSmallerThanABatchIsWarnedAbout) {
  TempDir dir("tinydata");
  const std::string base = "--config " + source_path("configs/gpt-tiny.json") +
                           " --steps 1 --set train.seq_len=32 --set model.max_positions=32 --set data.path=";
  auto r = run_cli(base + dir.write("one.txt", std::string(40, 'x')));  // 1 window of 33 bytes
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("the data hold 1 window(s), fewer than one global batch (16 samples)"), std::string::npos)
      << r.output;
  r = run_cli(base + dir.write("more.txt", std::string(33 * 16, 'x')));  // 16 windows
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("fewer than one global batch"), std::string::npos) << r.output;
}

double dry_run_parameters(const std::string& config) {
  const auto r = run_cli("--config " + source_path(config) + " --dry-run");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  const std::regex re("parameters +([0-9]+) ");
  if (!std::regex_search(r.output, m, re)) {
    ADD_FAILURE() << r.output;
    return 0;
  }
  return std::stod(m[1]);
}

// --version names the commit the binary was built from (a commit of this checkout; the
// build regenerates it) and what the build has; the first log line of a run says the same.
TEST(Cli, VersionNamesTheCommitAndTheBuild) {
  const auto r = run_cli("--version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(r.output.rfind("mics-train ", 0), 0u) << r.output;
  EXPECT_NE(r.output.find(mics::nccl_available() ? "; NCCL communicator)" : "; no NCCL communicator)"), std::string::npos)
      << r.output;
  std::string commit = r.output.substr(11, r.output.find(' ', 11) - 11);
  if (commit.size() > 6 && commit.substr(commit.size() - 6) == "-dirty") commit.resize(commit.size() - 6);
  const auto git = mics::test::run_cli_command("git -C " + source_path("") + " rev-parse --git-dir >/dev/null 2>&1");
  if (git.exit_code == 0) {  // built from a git checkout: a commit of it
    EXPECT_EQ(commit.find_first_not_of("0123456789abcdef"), std::string::npos) << commit;
    const auto known =
        mics::test::run_cli_command("git -C " + source_path("") + " cat-file -e " + commit + "^{commit} 2>&1");
    EXPECT_EQ(known.exit_code, 0) << commit << ": " << known.output;
  }
  const auto run = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --steps 1");
  EXPECT_NE(run.output.find(r.output.substr(0, r.output.find('\n')) + " on 1 rank(s)"), std::string::npos) << run.output;
}

TEST(DryRun, Bert10bHasTenBillionParameters) {
  EXPECT_NEAR(dry_run_parameters("configs/bert-10b.json"), 10.0e9, 0.01 * 10.0e9);
}

TEST(DryRun, Gpt175bHas175BillionParameters) {
  EXPECT_NEAR(dry_run_parameters("configs/gpt-175b.json"), 175e9, 0.02 * 175e9);
}

TEST(DryRun, ReportsModelStatesPerDevice) {
  const auto r = run_cli("--config " + source_path("configs/bert-10b.json") + " --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // 16 bytes per parameter over p = 8: 10.08e9 * 16 / 8 bytes = 18.78 GiB.
  EXPECT_NE(r.output.find("model states (16 bytes/param / p)  18.78 GiB"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("partition size p                   8"), std::string::npos) << r.output;
}

// train.keep_ffn_output keeps one more micro-batch x seq x hidden activation per block (the
// LN2 input in bf16, 8 x 512 x 2560 x 2 bytes = 20 MiB, over BERT 10B's 127 blocks ~2.5 GiB,
// and its fp32 statistics), and the plan says so on the activations line.
TEST(DryRun, SaysWhenBertsCheckpointedBlocksKeepTheirFfnOutput) {
  const std::string base = "--config " + source_path("configs/bert-10b.json") + " --dry-run";
  const auto whole = run_cli(base), kept = run_cli(base + " --set train.keep_ffn_output=true");
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  ASSERT_EQ(kept.exit_code, 0) << kept.output;
  EXPECT_NE(whole.output.find("activations (checkpointed, mb 8)   3.74 GiB\n"), std::string::npos) << whole.output;
  EXPECT_NE(kept.output.find("activations (checkpointed, mb 8)   6.20 GiB (each block's LN2 input kept)\n"),
            std::string::npos)
      << kept.output;
}

// A dry run on a login node plans the job it is asked about: --ranks 64 at p = 8 gives eight
// replicas, so the half-precision shard of the all-reduce across them is planned (2 bytes per
// parameter over p: 2.35 GiB for bert-10b), which one partition group of 8 does not need. The
// job's topology and batch are checked as the run would check them.
TEST(DryRun, RanksPlansTheJobsReplicasAndChecksItsShape) {
  const std::string base = "--config " + source_path("configs/bert-10b.json") + " --dry-run";
  const auto group = run_cli(base);
  ASSERT_EQ(group.exit_code, 0) << group.output;
  EXPECT_NE(group.output.find("ranks planned                      8 (1 per node, 1 partition group"), std::string::npos)
      << group.output;
  EXPECT_EQ(group.output.find("replication all-reduce shard"), std::string::npos) << group.output;
  const auto job = run_cli(base + " --ranks 64 --set runtime.ranks_per_node=8");
  ASSERT_EQ(job.exit_code, 0) << job.output;
  EXPECT_NE(job.output.find("ranks planned                      64 (8 per node, 8 replicas"), std::string::npos)
      << job.output;
  EXPECT_NE(job.output.find("fp16 replication all-reduce shard  2.35 GiB"), std::string::npos) << job.output;
  const struct {
    std::string args, message;
  } refusals[] = {
      {base + " --ranks 12", "'mics.partition_size' (8) must divide the number of ranks (12)"},
      {base + " --ranks 16 --set train.global_batch_size=24",
       "'train.global_batch_size' (24) must be a multiple of micro_batch_size x ranks (8 x 16)"},
      {base + " --ranks 0", "--ranks: must be a positive integer"},
      {"--config " + source_path("configs/bert-10b.json") + " --ranks 16", "--ranks goes with --dry-run"},
  };
  for (const auto& c : refusals) {
    const auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("dry run:"), std::string::npos) << c.args << "\n" << r.output;
  }
}

}  // namespace
