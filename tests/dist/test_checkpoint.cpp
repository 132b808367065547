// Sharded checkpoints: resume is bit-identical at the same N and p, continues at another
// N and p (resharding), survives an interrupted write, keeps only the newest. Refusals
// (another model, corruption, truncation, no checkpoint) are in the bad-input survey,
// tests/e2e/test_bad_input_survey.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "data/content_hash.h"
#include "tests/e2e/cli_runner.h"

namespace {

namespace fs = std::filesystem;
using mics::test::read_losses;
using mics::test::read_metrics;
using mics::test::run_cli;
using mics::test::run_mpi;
using mics::test::source_path;
using mics::test::TempDir;

const char* kShape =
    " --set log.every=1 --set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64"
    " --set model.layers=2 --set train.micro_batch_size=2 --set train.global_batch_size=8 --log-level warn";

std::string args(const std::string& model, const std::string& ckpt, int steps, const std::string& metrics) {
  return "--config " + source_path("configs/" + model + "-tiny.json") + kShape + " --steps " +
         std::to_string(steps) + " --set checkpoint.dir=" + ckpt + " --set checkpoint.every=3 --metrics " + metrics;
}

TEST(Checkpoint, ResumeIsBitIdenticalOnOneProcess) {
  for (const std::string model : {"gpt", "bert"}) {
    TempDir dir("ck1");
    const std::string ck = dir.file("ck");
    ASSERT_EQ(run_cli(args(model, ck, 6, dir.file("full.jsonl"))).exit_code, 0);
    const auto full = read_losses(dir.file("full.jsonl"));
    const auto r = run_cli(args(model, dir.file("ck2"), 6, dir.file("resumed.jsonl")) + " --resume " + ck + "/step-000003");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find("settings its run did not have"), std::string::npos) << r.output;  // (checkpoint.dir may differ)
    EXPECT_EQ(r.output.find("the data differ"), std::string::npos) << r.output;
    const auto resumed = read_losses(dir.file("resumed.jsonl"));
    ASSERT_EQ(full.size(), 6u);
    ASSERT_EQ(resumed.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed[i], full[i + 3]) << model << " step " << i + 4;
  }
}

// A resume that changes what shapes the training (here the seed: the data order and every
// mask after it) says so, naming each key with both values; it still runs.
TEST(Checkpoint, ResumingWithOtherTrainingSettingsNamesThem) {
  TempDir dir("ckchanged");
  const std::string ck = dir.file("ck");
  ASSERT_EQ(run_cli(args("gpt", ck, 3, dir.file("a.jsonl"))).exit_code, 0);
  const auto r = run_cli(args("gpt", ck, 4, dir.file("b.jsonl")) + " --resume latest --set train.seed=7");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming " + ck + "/step-000003 with settings its run did not have (train.seed 1234 -> 7)"),
            std::string::npos) << r.output;
}

// Data that changed under the same path reorders the windows, and samples_seen then counts
// positions in another order: the resume says so, down to one byte edited in place (which
// no size shows) and one window more (33 bytes appended to 1.3k windows).
TEST(Checkpoint, ResumingOnOtherDataSaysSo) {
  TempDir dir("ckdata");
  std::string text;
  for (int i = 0; i < 1200; ++i) text += "line " + std::to_string(i) + " of a small text to train on.\n";
  std::filesystem::create_directories(dir.file("data"));
  dir.write("data/a.txt", text);
  const std::string ck = dir.file("ck"), data = " --set data.path=" + dir.file("data");
  ASSERT_EQ(run_cli(args("gpt", ck, 3, dir.file("a.jsonl")) + data).exit_code, 0);
  const std::string resume = " --resume " + ck + "/step-000003";
  auto r = run_cli(args("gpt", dir.file("ck-same"), 4, dir.file("b.jsonl")) + data + resume);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("the data differ"), std::string::npos) << r.output;
  const auto identity = [&](const std::string& bytes) {
    mics::data::ContentHash content;
    content.add(bytes.data(), bytes.size());
    return "text '" + dir.file("data") + "': 1 files, " + std::to_string(bytes.size()) + " bytes, " +
           std::to_string(bytes.size() / 33) + " windows of 33 tokens, content " + content.hex();
  };
  std::string edited = text;
  edited[text.size() / 2] ^= 1;
  for (const std::string& now : {edited, edited + std::string(33, 'x')}) {
    dir.write("data/a.txt", now);
    r = run_cli(args("gpt", dir.file("ck-" + std::to_string(now.size())), 4, dir.file("c.jsonl")) + data + resume);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("the data differ from the checkpoint's run (then \"" + identity(text) + "\", now \"" +
                            identity(now) + "\")"),
              std::string::npos)
        << r.output;
  }
}

// runtime.overlap_optimizer: a checkpoint holds every deferred update of its step (the
// shard files are the bytes of updating at once), and a resumed run continues bit for bit.
TEST(Checkpoint, DeferredOptimizerUpdatesAreInTheCheckpoint) {
  TempDir dir("ck_overlap");
  const std::string overlap = " --set runtime.overlap_optimizer=true";
  ASSERT_EQ(run_cli(args("gpt", dir.file("at_once"), 6, dir.file("at_once.jsonl"))).exit_code, 0);
  ASSERT_EQ(run_cli(args("gpt", dir.file("deferred"), 6, dir.file("deferred.jsonl")) + overlap).exit_code, 0);
  auto bytes = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  for (const char* step : {"step-000003", "step-000006"}) {
    const std::string shard = std::string("/") + step + "/shard-00000-of-00001.bin";
    const std::string a = bytes(dir.file("at_once") + shard), b = bytes(dir.file("deferred") + shard);
    ASSERT_GT(a.size(), 1000u) << step;
    EXPECT_TRUE(a == b) << step << ": the deferred run's shard differs";
  }
  const auto full = read_losses(dir.file("at_once.jsonl"));
  const auto r = run_cli(args("gpt", dir.file("ck2"), 6, dir.file("resumed.jsonl")) + overlap + " --resume " +
                         dir.file("deferred") + "/step-000003");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto resumed = read_losses(dir.file("resumed.jsonl"));
  ASSERT_EQ(full.size(), 6u);
  ASSERT_EQ(resumed.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed[i], full[i + 3]) << "step " << i + 4;
}

TEST(Checkpoint, ResumeIsBitIdenticalUnderMpiAndContinuesAtAnotherWorldSize) {
  TempDir dir("ck4");
  const std::string ck = dir.file("ck");
  const std::string place = " --set train.global_batch_size=16 --set runtime.ranks_per_node=2 --set mics.partition_size=2";
  auto r = run_mpi(4, args("gpt", ck, 6, dir.file("full.jsonl")) + place);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Two shard files, written once each by the first replica.
  EXPECT_TRUE(fs::exists(ck + "/step-000003/shard-00000-of-00002.bin"));
  EXPECT_TRUE(fs::exists(ck + "/step-000003/shard-00001-of-00002.bin"));
  EXPECT_FALSE(fs::exists(ck + "/step-000003/shard-00002-of-00002.bin"));
  const auto full = read_losses(dir.file("full.jsonl"));

  r = run_mpi(4, args("gpt", dir.file("ck_same"), 6, dir.file("same.jsonl")) + place + " --resume " + ck + "/step-000003");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto same = read_losses(dir.file("same.jsonl"));
  ASSERT_EQ(same.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(same[i], full[i + 3]) << "step " << i + 4;

  // Two ranks, one replica: the same shards, the same global batch, another sum order.
  r = run_mpi(2, args("gpt", dir.file("ck_two"), 6, dir.file("two.jsonl")) + place + " --resume " + ck + "/step-000003");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto two = read_losses(dir.file("two.jsonl"));
  ASSERT_EQ(two.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(two[i], full[i + 3], 1e-5 * full[i + 3]) << "step " << i + 4;
}

TEST(Checkpoint, ReshardsAcrossWorldAndPartitionSizes) {
  // (N, p) = (8, 4) -> (4, 2) -> (1, 1) over one global batch of 16: the losses continue
  // those of the uninterrupted run within fp32 summation order.
  TempDir dir("ckre");
  const std::string batch = " --set train.global_batch_size=16 --set runtime.ranks_per_node=2";
  auto r = run_mpi(8, args("gpt", dir.file("ck84"), 9, dir.file("full.jsonl")) + batch + " --set mics.partition_size=4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto full = read_losses(dir.file("full.jsonl"));
  r = run_mpi(4, args("gpt", dir.file("ck42"), 6, dir.file("mid.jsonl")) + batch +
                     " --set mics.partition_size=2 --resume " + dir.file("ck84") + "/step-000003");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli(args("gpt", dir.file("ck11"), 9, dir.file("end.jsonl")) + batch +
              " --set runtime.ranks_per_node=1 --resume " + dir.file("ck42") + "/step-000006");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto resumed = read_losses(dir.file("mid.jsonl"));
  const auto end = read_losses(dir.file("end.jsonl"));
  resumed.insert(resumed.end(), end.begin(), end.end());
  ASSERT_EQ(full.size(), 9u);
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(resumed[i], full[i + 3], 1e-5 * full[i + 3]) << "step " << i + 4;
}

TEST(Checkpoint, InterruptedWriteLeavesThePreviousCheckpointUsable) {
  TempDir dir("ckcrash");
  const std::string ck = dir.file("ck");
  ASSERT_EQ(run_cli(args("gpt", ck, 6, dir.file("full.jsonl"))).exit_code, 0);
  // What a crash in the middle of writing step 9 leaves behind.
  fs::create_directories(ck + "/.tmp-step-000009");
  std::ofstream(ck + "/.tmp-step-000009/shard-00000-of-00001.bin") << "partial";
  const auto r = run_cli(args("gpt", ck, 9, dir.file("more.jsonl")) + " --resume latest");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_metrics(dir.file("more.jsonl")).front().at("step"), 7);
  EXPECT_FALSE(fs::exists(ck + "/.tmp-step-000009"));  // cleaned up by the next write
  EXPECT_TRUE(fs::exists(ck + "/step-000009/manifest.json"));
}

TEST(Checkpoint, NonFiniteStepsAreSkippedThenTheRunStopsWithTheGoodCheckpoint) {
  TempDir dir("cknan");
  const std::string ck = dir.file("ck");
  // An absurd learning rate: step 1 is finite, its update overflows everything after.
  const auto r = run_cli(args("gpt", ck, 30, dir.file("a.jsonl")) +
                         " --set checkpoint.every=1 --set checkpoint.keep=2 --set train.lr=1e30 --set train.warmup_steps=0"
                         " --set train.grad_clip=0 --set train.max_skipped_steps=3");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("3 consecutive steps had non-finite gradients ('train.max_skipped_steps' is 3), last in embeddings"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 2: loss"), std::string::npos) << r.output;
  const auto rows = read_metrics(dir.file("a.jsonl"));
  ASSERT_EQ(rows.size(), 3u);  // steps 1-3 logged; step 4 stopped the run
  EXPECT_FALSE(rows[0].at("skipped").get<bool>());
  EXPECT_TRUE(rows[1].at("skipped").get<bool>());
  EXPECT_EQ(rows[2].at("skipped_steps"), 2);
  // Only the last good step was checkpointed, and it still loads.
  std::ifstream latest(ck + "/latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-000001");
  EXPECT_FALSE(fs::exists(ck + "/step-000002"));
  const auto again = run_cli(args("gpt", dir.file("ck2"), 2, dir.file("b.jsonl")) + " --resume " + ck + "/step-000001");
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

TEST(Checkpoint, KeepsOnlyTheNewest) {
  TempDir dir("ckkeep");
  const std::string ck = dir.file("ck");
  ASSERT_EQ(run_cli(args("gpt", ck, 5, dir.file("a.jsonl")) + " --set checkpoint.every=1 --set checkpoint.keep=2").exit_code, 0);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ck)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-000004", "step-000005"}));
}

// A fresh run pointed at a checkpoint.dir that holds checkpoints is refused before it
// trains, by every rank (rank 0 looks, all agree: none waits on another), leaving them as
// they were; continuing them is not. (One rank: the bad-input survey.)
TEST(Checkpoint, AFreshRunIntoCheckpointsIsRefusedOnEveryRankAndTouchesThemNot) {
  TempDir dir("ckfresh");
  const std::string ck = dir.file("ck");
  ASSERT_EQ(run_cli(args("gpt", ck, 3, dir.file("a.jsonl"))).exit_code, 0);
  auto listing = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::recursive_directory_iterator(ck))
      names.push_back(e.path().string() + " " + (e.is_regular_file() ? std::to_string(e.file_size()) : "dir"));
    std::sort(names.begin(), names.end());
    return names;
  };
  const auto before = listing();
  const auto r = run_mpi(2, args("gpt", ck, 6, dir.file("b.jsonl")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("'checkpoint.dir' " + ck + " already holds checkpoints (the newest step-000003)"),
            std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("b.jsonl")));
  EXPECT_EQ(listing(), before);
  const auto resumed = run_mpi(2, args("gpt", ck, 6, dir.file("c.jsonl")) + " --resume auto");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(read_losses(dir.file("c.jsonl")).size(), 3u);
}

// A checkpoint that cannot be written once the run is going (here its `latest` pointer: a
// directory stands where the pointer's temporary file goes) ends the run with exit 1, not 2
// (bad input: a checkpoint.dir unusable from the start is refused before training, in the
// bad-input survey), and one line naming the file.
TEST(Checkpoint, AWriteThatFailsEndsTheRunWithExitOne) {
  TempDir dir("ckfail");
  const std::string ck = dir.file("ck");
  fs::create_directories(ck + "/.latest.tmp/in-the-way");
  const auto r = run_cli(args("gpt", ck, 2, dir.file("a.jsonl")) + " --set checkpoint.every=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("mics-train: error: cannot create " + ck + "/.latest.tmp: Is a directory."), std::string::npos)
      << r.output;
  EXPECT_EQ(read_losses(dir.file("a.jsonl")).size(), 1u);  // step 1 trained, its checkpoint failed
  // What that leaves: step-000001 complete, no `latest`. A requeue (--resume auto) continues
  // from the newest complete checkpoint rather than being refused or starting over.
  ASSERT_TRUE(fs::exists(ck + "/step-000001/manifest.json"));
  ASSERT_FALSE(fs::exists(ck + "/latest"));
  fs::remove_all(ck + "/.latest.tmp");
  const auto again = run_cli(args("gpt", ck, 2, dir.file("b.jsonl")) + " --set checkpoint.every=1 --resume auto");
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("has no 'latest' pointer (a save cut off before writing it?); continuing from the newest "
                              "complete checkpoint, " + ck + "/step-000001"), std::string::npos) << again.output;
  const auto rows = read_metrics(dir.file("b.jsonl"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows.front().at("step"), 2);
}

}  // namespace

namespace {

std::string pointer_of(const std::string& ck) {
  std::ifstream in(ck + "/latest");
  std::string name;
  in >> name;
  return name;
}

// Two ranks under mpirun, each in its own working directory with checkpoint.dir=ck
// (relative): every rank sees its own `ck`, as nodes whose views of one network file system
// differ (a stale cache, a mount missing on one node) would.
mics::test::CliResult run_two_views(const std::string& view0, const std::string& view1, const std::string& args) {
  const auto rank = [&](const std::string& wdir) { return " -np 1 -wdir " + wdir + " " + MICS_TRAIN_BIN + " " + args; };
  return mics::test::run_cli_command("OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " +
                                     std::string(MICS_MPIRUN) + rank(view0) + " :" + rank(view1) + " 2>&1");
}

}  // namespace

// A save cut off after its step directory was renamed into place, before `latest` was
// replaced, leaves the pointer one checkpoint behind. A requeue (--resume auto), or
// --resume latest, continues from the newer complete checkpoint with a warning naming both,
// rather than being refused as going back to an older one.
TEST(Checkpoint, AStalePointerContinuesFromTheNewerCompleteCheckpoint) {
  for (const std::string resume : {"latest", "auto"}) {
    TempDir dir("ckstale");
    const std::string ck = dir.file("ck");
    ASSERT_EQ(run_cli(args("gpt", ck, 2, dir.file("a.jsonl")) + " --set checkpoint.every=1").exit_code, 0);
    dir.write("ck/latest", "step-000001\n");
    const auto r = run_cli(args("gpt", ck, 3, dir.file("b.jsonl")) + " --resume " + resume);
    ASSERT_EQ(r.exit_code, 0) << resume << ": " << r.output;
    EXPECT_NE(r.output.find("--resume " + resume + ": " + ck + "/latest names step-000001, but step-000002 is newer and "
                            "complete (a save cut off before it updated the pointer?); continuing from " + ck +
                            "/step-000002"),
              std::string::npos) << r.output;
    const auto rows = read_metrics(dir.file("b.jsonl"));
    ASSERT_EQ(rows.size(), 1u) << resume;
    EXPECT_EQ(rows.front().at("step"), 3) << resume;
    EXPECT_EQ(pointer_of(ck), "step-000003") << resume;
  }
}

// A shard write that fails (here the file size limit, as a full disk would) removes the
// save's temporary directory before the run ends (exit 1): left behind it would keep a full
// disk full, and the requeued job would be refused at start-up for want of space.
TEST(Checkpoint, AFailedShardWriteLeavesNoTemporaryDirectory) {
  TempDir dir("ckfsize");
  const std::string ck = dir.file("ck");
  // (PMIX_MCA_gds=hash: MPI's start-up keeps its shared tables in memory, not in a file the
  // limit would cut short.)
  const auto r = mics::test::run_cli_command("trap '' XFSZ; ulimit -f 200; export PMIX_MCA_gds=hash; exec " +
                                             std::string(MICS_TRAIN_BIN) + " " +
                                             args("gpt", ck, 2, dir.file("a.jsonl")) +
                                             " --set checkpoint.every=1 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("mics-train: error: writing " + ck + "/.tmp-step-000001/shard-00000-of-00001.bin failed: File "
                          "too large."),
            std::string::npos) << r.output;
  EXPECT_TRUE(fs::is_directory(ck));
  EXPECT_FALSE(fs::exists(ck + "/.tmp-step-000001"));
  EXPECT_TRUE(fs::is_empty(ck));
}

// The leftovers of a save cut off by a kill (its temporary directory, the pointer's
// temporary file) are removed at start-up, before checkpoint.dir is probed (on a disk they
// filled, the probe would fail), not only by the next save; the checkpoints stay.
TEST(Checkpoint, StartUpRemovesTheLeftoversOfACutOffSave) {
  TempDir dir("ckleft");
  const std::string ck = dir.file("ck");
  ASSERT_EQ(run_cli(args("gpt", ck, 1, dir.file("a.jsonl"))).exit_code, 0);
  fs::create_directories(ck + "/.tmp-step-000002");
  dir.write("ck/.tmp-step-000002/shard-00000-of-00001.bin", "partial");
  dir.write("ck/.latest.tmp", "step-000002\n");
  // Nothing left to train: no save follows that could have removed them instead.
  const auto r = run_cli(args("gpt", ck, 1, dir.file("b.jsonl")) + " --resume auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("nothing left to train"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(ck + "/.tmp-step-000002"));
  EXPECT_FALSE(fs::exists(ck + "/.latest.tmp"));
  EXPECT_TRUE(fs::exists(ck + "/step-000001/manifest.json"));
  EXPECT_EQ(pointer_of(ck), "step-000001");
}

// --resume latest is decided on rank 0 and sent to every rank: a rank whose view of
// checkpoint.dir names another step (view 1's `latest` is at step 9, rank 0's at 6) still
// loads rank 0's choice, and the run continues the 9-step run's steps 7-8. A rank whose
// view holds other files at that path (view 1's step-000006 is step 9's) is refused on
// every rank (exit 2), naming both states, before anything is trained.
TEST(Checkpoint, EveryRankLoadsTheCheckpointRankZeroChoseAndTheSameState) {
  TempDir dir("ckviews");
  const std::string view0 = dir.file("view0"), view1 = dir.file("view1");
  fs::create_directories(view0);
  ASSERT_EQ(run_cli(args("gpt", view1 + "/ck", 9, dir.file("full.jsonl"))).exit_code, 0);
  const auto full = read_losses(dir.file("full.jsonl"));
  ASSERT_EQ(full.size(), 9u);
  fs::copy(view1 + "/ck", view0 + "/ck", fs::copy_options::recursive);
  fs::remove_all(view0 + "/ck/step-000009");
  dir.write("view0/ck/latest", "step-000006\n");
  const std::string run = args("gpt", "ck", 8, dir.file("two.jsonl")) +
                          " --set mics.partition_size=1 --set runtime.comm_timeout_s=20 --resume latest";
  auto r = run_two_views(view0, view1, run);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto two = read_losses(dir.file("two.jsonl"));
  ASSERT_EQ(two.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(two[i], full[i + 6], 1e-5 * full[i + 6]) << "step " << i + 7;

  // View 1: step-000006 holds step 9's checkpoint.
  fs::remove_all(view1 + "/ck/step-000006");
  fs::rename(view1 + "/ck/step-000009", view1 + "/ck/step-000006");
  dir.write("view1/ck/latest", "step-000006\n");
  fs::remove_all(view0 + "/ck/step-000008");
  dir.write("view0/ck/latest", "step-000006\n");
  r = run_two_views(view0, view1, args("gpt", "ck", 8, dir.file("mixed.jsonl")) +
                                      " --set mics.partition_size=1 --set runtime.comm_timeout_s=20 --resume latest");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  const std::string expected = "mics-train: error: the ranks loaded different checkpoints from ck/step-000006: rank 0 "
                               "step 6 (48 samples seen), rank 1 step 9 (72 samples seen); every rank must see the same "
                               "files there";
  size_t lines = 0;
  for (size_t at = r.output.find(expected); at != std::string::npos; at = r.output.find(expected, at + 1)) ++lines;
  EXPECT_EQ(lines, 2u) << r.output;  // every rank says so
  EXPECT_TRUE(read_metrics(dir.file("mixed.jsonl")).empty());
}

// checkpoint.dir is probed at start-up by every rank that writes shards, on its own node's
// view: a rank that cannot write there (here its view lacks the directory: a mount missing
// on its node) stops the run before training (exit 2 on every rank, that rank naming the
// path), not at the first save with the training lost.
TEST(Checkpoint, EveryRankThatWritesShardsProbesTheDirectory) {
  TempDir dir("ckprobe");
  const std::string view0 = dir.file("view0"), view1 = dir.file("view1");
  fs::create_directories(view0);
  fs::create_directories(view1);
  const auto r = run_two_views(view0, view1, args("gpt", "ck", 2, dir.file("a.jsonl")) +
                                                 " --set mics.partition_size=2 --set checkpoint.every=1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("mics-train: error: 'checkpoint.dir' ck cannot be written to from rank 1: No such file or "
                          "directory."),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mics-train: error: another rank cannot write to 'checkpoint.dir' ck; see its message."),
            std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("a.jsonl")));
  EXPECT_TRUE(fs::is_empty(view0 + "/ck"));
}
