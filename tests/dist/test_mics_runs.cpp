// The MiCS runtime end to end under mpirun: every placement of 8 ranks (ranks per node,
// partition size, flat or hierarchical gather, two-hop or per-micro-step sync) trains to
// the same losses as one process over the same global batch; the byte counters equal the
// formulas of docs/references.md; each rank holds 1/p of the model states.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "engine/config.h"
#include "model/model.h"
#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::read_losses;
using mics::test::read_metrics;
using mics::test::run_cli;
using mics::test::run_mpi;
using mics::test::source_path;
using mics::test::TempDir;

// Small shapes so eight ranks share two cores quickly: 5 steps of 2 micro-batches per rank.
const char* kShape =
    " --steps 5 --set log.every=1 --set train.seq_len=32 --set model.max_positions=32"
    " --set model.hidden=64 --set model.layers=2 --set train.micro_batch_size=2"
    " --set train.global_batch_size=32 --log-level warn";

std::vector<double> single_process(const std::string& model, const TempDir& dir) {
  const std::string m = dir.file("single.jsonl");
  const auto r = run_cli("--config " + source_path("configs/" + model + "-tiny.json") + kShape + " --metrics " + m);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return read_losses(m);
}

struct Placement {
  const char* model;
  int k, p;
  const char* hierarchical;
  const char* sync;
};

std::string placement_name(const Placement& c) {
  char name[96];
  std::snprintf(name, sizeof name, "%s_k%d_p%d_hier_%s_%s", c.model, c.k, c.p, c.hierarchical, c.sync);
  return name;
}

std::vector<Placement> all_placements() {
  std::vector<Placement> out;
  for (const char* model : {"gpt", "bert"})
    for (int k : {2, 4})
      for (int p : {1, 2, 4, 8})
        for (const char* sync : {"two_hop", "every_microstep"}) {
          out.push_back({model, k, p, "false", sync});
          if (p > k) out.push_back({model, k, p, "true", sync});
        }
  return out;
}

// Eight ranks at placement `c` (plus `extra` flags) train to the one-process losses.
void expect_matches_one_process(const Placement& c, const std::string& extra) {
  TempDir dir("mics");
  const auto reference = single_process(c.model, dir);
  const std::string m = dir.file("dist.jsonl");
  const auto r = run_mpi(8, "--config " + source_path(std::string("configs/") + c.model + "-tiny.json") + kShape +
                                " --set runtime.ranks_per_node=" + std::to_string(c.k) +
                                " --set mics.partition_size=" + std::to_string(c.p) +
                                " --set mics.hierarchical_allgather=" + c.hierarchical +
                                " --set mics.gradient_sync=" + c.sync + " --metrics " + m + extra);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto dist = read_losses(m);
  ASSERT_EQ(reference.size(), 5u);
  ASSERT_EQ(dist.size(), 5u);
  for (size_t i = 0; i < dist.size(); ++i)  // fp32 sums in another order: 1e-5 relative
    EXPECT_NEAR(dist[i], reference[i], 1e-5 * std::abs(reference[i])) << "step " << i + 1;
}

class EightRanks : public ::testing::TestWithParam<Placement> {};

TEST_P(EightRanks, LossesMatchOneProcess) { expect_matches_one_process(GetParam(), ""); }

INSTANTIATE_TEST_SUITE_P(Placements, EightRanks, ::testing::ValuesIn(all_placements()),
                         [](const auto& info) { return placement_name(info.param); });

// The staged communicator (the GPU path for ranks sharing a device: copies through host
// memory, collectives complete before they return) on the CPU backend: the store's logic
// must not depend on collectives still being in flight.
class StagedEightRanks : public ::testing::TestWithParam<Placement> {};

TEST_P(StagedEightRanks, LossesMatchOneProcess) {
  expect_matches_one_process(GetParam(), " --set runtime.communicator=staged");
}

INSTANTIATE_TEST_SUITE_P(Staged, StagedEightRanks,
                         ::testing::Values(Placement{"gpt", 2, 4, "true", "two_hop"},
                                           Placement{"bert", 2, 2, "false", "two_hop"},
                                           Placement{"gpt", 4, 8, "false", "every_microstep"}),
                         [](const auto& info) { return placement_name(info.param); });

// runtime.overlap_optimizer under MiCS: each layer's deferred update runs before the cast
// that its gather starts from (prefetched gathers included) and before every_microstep
// zeroes the gradients it reads, so the losses are those of updating at once, bit for bit.
class OverlappedOptimizer : public ::testing::TestWithParam<Placement> {};

TEST_P(OverlappedOptimizer, SameLossesAsUpdatingAtOnce) {
  const Placement& c = GetParam();
  TempDir dir("overlap");
  std::vector<double> losses[2];
  for (int overlap = 0; overlap < 2; ++overlap) {
    const std::string m = dir.file("run" + std::to_string(overlap) + ".jsonl");
    const auto r = run_mpi(8, "--config " + source_path(std::string("configs/") + c.model + "-tiny.json") + kShape +
                                  " --set runtime.ranks_per_node=" + std::to_string(c.k) +
                                  " --set mics.partition_size=" + std::to_string(c.p) +
                                  " --set mics.hierarchical_allgather=" + c.hierarchical +
                                  " --set mics.gradient_sync=" + c.sync +
                                  " --set runtime.overlap_optimizer=" + (overlap ? "true" : "false") + " --metrics " + m);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    losses[overlap] = read_losses(m);
  }
  ASSERT_EQ(losses[0].size(), 5u);
  ASSERT_EQ(losses[1].size(), 5u);
  for (size_t i = 0; i < losses[0].size(); ++i) EXPECT_EQ(losses[1][i], losses[0][i]) << "step " << i + 1;
}

INSTANTIATE_TEST_SUITE_P(Placements, OverlappedOptimizer,
                         ::testing::Values(Placement{"gpt", 2, 4, "true", "two_hop"},
                                           Placement{"bert", 2, 2, "false", "every_microstep"}),
                         [](const auto& info) { return placement_name(info.param); });

// ---- byte counters against the formulas ----

struct Counted {
  int n, k, p;
  const char* hierarchical;
  const char* sync;
};

class Counters : public ::testing::TestWithParam<Counted> {};

TEST_P(Counters, EqualTheFormulas) {
  const Counted c = GetParam();
  TempDir dir("bytes");
  const int accumulation = 2;
  const std::string config = source_path("configs/gpt-tiny.json");
  const std::string args = "--config " + config + kShape +
                           " --set train.global_batch_size=" + std::to_string(2 * accumulation * c.n) +
                           " --set runtime.ranks_per_node=" + std::to_string(c.k) +
                           " --set mics.partition_size=" + std::to_string(c.p) +
                           " --set mics.hierarchical_allgather=" + c.hierarchical +
                           " --set mics.gradient_sync=" + c.sync + " --metrics " + dir.file("m{rank}.jsonl");
  const auto r = run_mpi(c.n, args);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // The layout the engine used, rebuilt from the same config.
  const mics::Config cfg = mics::load_config(config, {"train.seq_len=32", "model.max_positions=32",
                                                      "model.hidden=64", "model.layers=2"});
  const auto layout = mics::model::build_layout(cfg.model_spec(), mics::model::shard_multiple_for(c.p));
  const double total = static_cast<double>(layout.total_elements());  // Psi, padded
  const double emb = static_cast<double>(layout.layers()[0].size);
  // GPT gathers every layer once forward and once backward, and the tied embedding once
  // more for the LM head.
  const double gathered = 2 * total + emb;
  const double p = c.p, k = c.k, rr = c.n / c.p, s = accumulation, f = 4;  // fp32 bytes

  double node0_gather_inter = 0;
  for (int rank = 0; rank < c.n; ++rank) {
    char file[32];
    std::snprintf(file, sizeof file, "m%d.jsonl", rank);
    const auto rows = read_metrics(dir.file(file));
    ASSERT_EQ(rows.size(), 5u) << "rank " << rank;
    const auto& sent = rows[2].at("comm_sent");  // a steady step; every step moves the same
    auto both = [&](const char* kind, const char* op) {
      return sent[kind][op]["intra_node"].get<double>() + sent[kind][op]["inter_node"].get<double>();
    };
    // Partition group: s x (p-1)/p of every gathered layer, and of the gradient.
    EXPECT_DOUBLE_EQ(both("partition", "all_gather"), s * (p - 1) / p * f * gathered) << "rank " << rank;
    EXPECT_DOUBLE_EQ(both("partition", "reduce_scatter"), s * (p - 1) / p * f * total) << "rank " << rank;
    // Replication group: 2(r-1)/r of the shard, once per step (two-hop) or per micro-step.
    const double syncs = std::string(c.sync) == "two_hop" ? 1 : s;
    EXPECT_DOUBLE_EQ(both("replication", "all_reduce"), syncs * 2 * (rr - 1) / rr * f * total / p) << "rank " << rank;
    if (rank / c.k == 0) node0_gather_inter += sent["partition"]["all_gather"]["inter_node"].get<double>();
    // Model states: fp32 master, gradient accumulator, Adam m and v, 1/p each (plus the
    // separate micro-step accumulator when syncing every micro-step).
    const double states = (std::string(c.sync) == "two_hop" ? 16 : 20) * total / p;
    EXPECT_DOUBLE_EQ(rows[0].at("model_state_bytes").get<double>(), states) << "rank " << rank;
  }
  // A node's inter-node gather traffic: flat (p-1)/p of each layer, hierarchical (p-k)/p.
  if (c.p > c.k) {
    const double share = std::string(c.hierarchical) == "true" ? (p - k) / p : (p - 1) / p;
    EXPECT_DOUBLE_EQ(node0_gather_inter, s * share * f * gathered);
  } else {
    EXPECT_EQ(node0_gather_inter, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Counters,
                         ::testing::Values(Counted{8, 2, 4, "false", "two_hop"}, Counted{8, 2, 4, "true", "two_hop"},
                                           Counted{8, 2, 8, "true", "two_hop"}, Counted{4, 2, 2, "false", "two_hop"},
                                           Counted{8, 4, 8, "false", "every_microstep"}),
                         [](const auto& info) {
                           const Counted& c = info.param;
                           char name[80];
                           std::snprintf(name, sizeof name, "n%d_k%d_p%d_hier_%s_%s", c.n, c.k, c.p,
                                         c.hierarchical, c.sync);
                           return std::string(name);
                         });

}  // namespace
