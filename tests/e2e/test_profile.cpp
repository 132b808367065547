// --profile: the op table of rank 0 after the warm-up step; profiling changes no number.
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <sstream>

#include "engine/op_profile.h"
#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::read_losses;
using mics::test::run_cli;
using mics::test::source_path;
using mics::test::TempDir;

// gpt-tiny (4 layers) on synthetic tokens: 2 micro-batches per step.
std::string tiny_run(const TempDir& dir, const std::string& metrics, int steps) {
  return "--config " + source_path("configs/gpt-tiny.json") + " --steps " + std::to_string(steps) +
         " --set data.source=synthetic --set data.path='\"\"' --set train.seq_len=32 --set log.every=1"
         " --metrics " + dir.file(metrics);
}

// op -> (calls per step, share of the step in percent), from the printed table.
std::map<std::string, std::pair<double, double>> parse_table(const std::string& output) {
  std::map<std::string, std::pair<double, double>> rows;
  const std::regex row(R"(^(\w+)\s+([0-9.]+)\s+[0-9.]+\s+([0-9.]+)%)");
  std::istringstream in(output);
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, row)) rows[m[1]] = {std::stod(m[2]), std::stod(m[3])};
  return rows;
}

// A timeline whose marks are at known device times: what OpProfile reads at settle().
class FakeTimeline final : public mics::DeviceTimeline {
 public:
  std::vector<double> at;  // device seconds of each mark
  int forgotten = 0;
  int64_t mark() override {
    at.push_back(0.5 * static_cast<double>(at.size()));
    return static_cast<int64_t>(at.size()) - 1;
  }
  double seconds_between(int64_t begin, int64_t end) override {
    return at.at(static_cast<size_t>(end)) - at.at(static_cast<size_t>(begin));
  }
  void forget() override {
    at.clear();
    ++forgotten;
  }
  const char* how() const override { return "fake marks"; }
};

TEST(Profile, DeviceTimedOpsCountWhenSettled) {
  FakeTimeline timeline;
  mics::OpProfile profile;
  const int64_t a = timeline.mark(), b = timeline.mark(), c = timeline.mark();
  profile.add_timed("gemm", 2e12, timeline, a, c);  // 1.0 s
  profile.add_timed("gemm", 2e12, timeline, b, c);  // 0.5 s
  EXPECT_STREQ(profile.timing(), "fake marks");
  EXPECT_TRUE(profile.entries().empty());  // nothing read before settle
  profile.settle();
  ASSERT_EQ(profile.entries().count("gemm"), 1u);
  EXPECT_EQ(profile.entries().at("gemm").calls, 2);
  EXPECT_DOUBLE_EQ(profile.entries().at("gemm").seconds, 1.5);
  EXPECT_EQ(timeline.forgotten, 1);  // marks free for the next step
  const int64_t d = timeline.mark(), e = timeline.mark();
  profile.add_timed("add", 0, timeline, d, e);
  profile.reset();  // settles, then starts an empty window
  EXPECT_TRUE(profile.entries().empty());
  EXPECT_EQ(timeline.forgotten, 2);
}

// Linear ops also counted per shape: the same features with rows in another power of two (a
// head on the masked rows) apart, rows varying within one (the masked count per batch) together.
TEST(Profile, LinearOpsCountedPerShape) {
  FakeTimeline timeline;
  mics::OpProfile profile;
  using Shape = mics::OpProfile::LinearShape;
  const Shape layer{4096, 2560, 2560}, head_a{606, 2560, 2560}, head_b{590, 2560, 2560};
  const int64_t a = timeline.mark(), b = timeline.mark(), c = timeline.mark();
  profile.add_timed("linear_forward", 2.0 * 4096 * 2560 * 2560, timeline, a, c, &layer);  // 1.0 s
  profile.add_timed("linear_forward", 2.0 * 606 * 2560 * 2560, timeline, a, b, &head_a);  // 0.5 s
  profile.add_timed("linear_forward", 2.0 * 590 * 2560 * 2560, timeline, b, c, &head_b);  // 0.5 s
  profile.add_timed("add", 0, timeline, a, b);
  profile.settle();
  EXPECT_EQ(profile.entries().at("linear_forward").calls, 3);
  const auto& shapes = profile.linear_shapes();
  ASSERT_EQ(shapes.size(), 2u);
  const auto& full = shapes.at({"linear_forward", 2560, 2560, 13});  // 4096: 13 bits
  const auto& masked = shapes.at({"linear_forward", 2560, 2560, 10});  // 512..1023
  EXPECT_EQ(full.calls, 1);
  EXPECT_EQ(masked.calls, 2);
  EXPECT_DOUBLE_EQ(masked.rows, 606.0 + 590.0);
  EXPECT_DOUBLE_EQ(masked.seconds, 1.0);
  const std::string table = profile.table(4.0, 1);
  EXPECT_NE(table.find("linear ops by shape"), std::string::npos) << table;
  // The masked rows' mean per call, 1 s over the window's one step, 25% of its 4 s, and
  // 2 x (606 + 590) x 2560^2 FLOPs in that second.
  const std::regex masked_row(R"(linear_forward 2560->2560\s+598\s+2\.0\s+1000\.000\s+25\.0%\s+0\.0157)");
  EXPECT_TRUE(std::regex_search(table, masked_row)) << table;
  profile.reset();
  EXPECT_TRUE(profile.linear_shapes().empty());
}

TEST(Profile, CountsEveryOpOfAStepAndChangesNoLoss) {
  TempDir dir("profile");
  const auto plain = run_cli(tiny_run(dir, "plain.jsonl", 4));
  const auto profiled = run_cli(tiny_run(dir, "profiled.jsonl", 4) + " --profile");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(profiled.exit_code, 0) << profiled.output;
  EXPECT_EQ(read_losses(dir.file("plain.jsonl")), read_losses(dir.file("profiled.jsonl")));
  EXPECT_NE(profiled.output.find("op profile of rank 0, steps 2-4"), std::string::npos) << profiled.output;
  EXPECT_EQ(plain.output.find("op profile"), std::string::npos);

  const auto rows = parse_table(profiled.output);
  // Per micro-batch: q/k/v, attention projection and the second MLP layer in each of the 4
  // blocks, and the vocabulary projection; the first MLP layer with its GELU (and, backward,
  // the second through that GELU) as one op each; 2 micro-batches per step.
  ASSERT_TRUE(rows.count("linear_forward")) << profiled.output;
  EXPECT_EQ(rows.at("linear_forward").first, 2 * (3 * 4 + 1));
  EXPECT_EQ(rows.at("linear_backward").first, 2 * (3 * 4 + 1));
  EXPECT_EQ(rows.at("linear_gelu_forward").first, 2 * 4);
  EXPECT_EQ(rows.at("linear_gelu_backward").first, 2 * 4);
  EXPECT_EQ(rows.at("add_layernorm_forward").first, 2 * 4);  // pre-LN: mid = in + attention, LN2
  EXPECT_EQ(rows.at("attention_forward").first, 2 * 4);
  EXPECT_EQ(rows.at("cross_entropy").first, 2);
  ASSERT_TRUE(rows.count("adamw"));
  double share = 0;
  for (const auto& [op, r] : rows) share += r.second;
  EXPECT_LE(share, 100.5);  // the ops fit in the step (each share is rounded to 0.1%)
  EXPECT_GT(share, 50.0);   // and on the CPU they are most of it

  // The linear ops by shape add up to the ops' calls: gpt-tiny's hidden 128, FFN 512, q/k/v
  // as one 128->384 product; 8 x 32 rows per micro-batch.
  const std::regex shape_row(R"(^(linear\w*) (\d+)->(\d+)\s+(\d+)\s+([0-9.]+)\s)");
  std::map<std::string, double> per_op;
  std::map<std::string, std::string> rows_of;
  std::istringstream in(profiled.output);
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, shape_row)) {
      per_op[m[1]] += std::stod(m[5]);
      rows_of[std::string(m[1]) + " " + std::string(m[2]) + "->" + std::string(m[3])] = m[4];
    }
  for (const char* op : {"linear_forward", "linear_backward", "linear_gelu_forward", "linear_gelu_backward"})
    EXPECT_EQ(per_op[op], rows.at(op).first) << op << "\n" << profiled.output;
  EXPECT_EQ(rows_of["linear_gelu_forward 128->512"], "256") << profiled.output;
  EXPECT_EQ(rows_of["linear_forward 128->384"], "256") << profiled.output;
}

// Checkpoints written during the profiled steps are not a step's work: the same ops per
// step as without them (the saves' copies left out), and the steps' time without the saves'.
TEST(Profile, LeavesCheckpointsOut) {
  TempDir dir("profile-ckpt");
  const auto plain = run_cli(tiny_run(dir, "plain.jsonl", 4) + " --profile");
  const auto saving = run_cli(tiny_run(dir, "saving.jsonl", 4) + " --profile --set checkpoint.dir='\"" +
                              dir.file("ckpt") + "\"' --set checkpoint.every=1");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(saving.exit_code, 0) << saving.output;
  const auto a = parse_table(plain.output), b = parse_table(saving.output);
  ASSERT_FALSE(a.empty()) << plain.output;
  std::map<std::string, double> calls_a, calls_b;
  for (const auto& [op, r] : a) calls_a[op] = r.first;
  for (const auto& [op, r] : b) calls_b[op] = r.first;
  EXPECT_EQ(calls_a, calls_b) << saving.output;
  double share = 0;
  for (const auto& [op, r] : b) share += r.second;
  EXPECT_GT(share, 50.0) << "the saves' time counted as the steps': " << saving.output;
}

// BERT with dropout goes through the ops GPT leaves out (token types, masked rows gathered
// for the head, dropout masks): still the same numbers.
TEST(Profile, BertWithDropoutChangesNoLoss) {
  TempDir dir("profile-bert");
  const std::string run = "--config " + source_path("configs/bert-tiny.json") +
                          " --steps 3 --set data.source=synthetic --set data.path='\"\"' --set train.seq_len=32"
                          " --set model.dropout=0.1 --set model.attention_dropout=0.1 --set log.every=1 --metrics ";
  const auto plain = run_cli(run + dir.file("plain.jsonl"));
  const auto profiled = run_cli(run + dir.file("profiled.jsonl") + " --profile");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(profiled.exit_code, 0) << profiled.output;
  EXPECT_EQ(read_losses(dir.file("plain.jsonl")), read_losses(dir.file("profiled.jsonl")));
  const auto rows = parse_table(profiled.output);
  EXPECT_TRUE(rows.count("dropout_forward") && rows.count("gather_rows") && rows.count("scatter_add_rows"))
      << profiled.output;
}

TEST(Profile, RefusedWithoutTraining) {
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + " --dry-run --profile");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("--profile times a training run"), std::string::npos) << r.output;
}

}  // namespace
