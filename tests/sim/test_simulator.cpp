// The simulated cluster against the real runtime: the same configurations run under
// mpirun (8 ranks, emulated nodes) and in the simulator count exactly the same bytes on
// every rank, by group kind, collective and link tier; the simulator is deterministic
// and fast; its cost model behaves as the alpha-beta formulas say.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>

#include "engine/config.h"
#include "engine/memory_report.h"
#include "engine/sim/cluster_spec.h"
#include "engine/sim/sim_communicator.h"
#include "engine/sim/simulate.h"
#include "kernels/ops.h"
#include "tests/e2e/cli_runner.h"

namespace {

using mics::test::read_metrics;
using mics::test::run_cli;
using mics::test::run_mpi;
using mics::test::source_path;
using mics::test::TempDir;

mics::sim::ClusterSpec test_cluster(int gpus_per_node) {
  mics::sim::ClusterSpec c;
  c.name = "test";
  c.gpu_name = "test";
  c.gpus_per_node = gpus_per_node;
  c.memory_gib = 80;
  c.peak_tflops_half = 100;
  c.peak_tflops_fp32 = 10;
  c.gemm_efficiency = 0.5;
  c.memory_gbs = 1000;
  c.memory_efficiency = 0.5;
  c.intra_gbs = 100;
  c.intra_latency_us = 2;
  c.inter_gbits = 100;
  c.inter_latency_us = 10;
  return c;
}

const std::vector<std::string> kShape = {"train.seq_len=32", "model.max_positions=32", "model.hidden=64",
                                         "model.layers=2", "train.micro_batch_size=2"};

struct Placement {
  const char* model;
  int n, k, p;
  const char* hierarchical;
  const char* sync;
};

void PrintTo(const Placement& c, std::ostream* os) {
  *os << c.model << " n=" << c.n << " k=" << c.k << " p=" << c.p << " hierarchical=" << c.hierarchical << " " << c.sync;
}

class SimulatedBytes : public ::testing::TestWithParam<Placement> {};

TEST_P(SimulatedBytes, EqualTheMpiCountersOnEveryRank) {
  const Placement c = GetParam();
  TempDir dir("simbytes");
  std::vector<std::string> sets = kShape;
  sets.push_back("train.global_batch_size=" + std::to_string(2 * 2 * c.n));  // two micro-steps
  sets.push_back("runtime.ranks_per_node=" + std::to_string(c.k));
  sets.push_back("mics.partition_size=" + std::to_string(c.p));
  sets.push_back("mics.hierarchical_allgather=" + std::string(c.hierarchical));
  sets.push_back("mics.gradient_sync=" + std::string(c.sync));
  const std::string config = source_path(std::string("configs/") + c.model + "-tiny.json");
  std::string args = "--config " + config + " --steps 3 --set log.every=1 --log-level warn --metrics " +
                     dir.file("m{rank}.jsonl");
  for (const std::string& s : sets) args += " --set " + s;
  const auto r = run_mpi(c.n, args);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const mics::Config cfg = mics::load_config(config, sets);
  for (int rank = 0; rank < c.n; ++rank) {
    char file[32];
    std::snprintf(file, sizeof file, "m%d.jsonl", rank);
    const auto rows = read_metrics(dir.file(file));
    ASSERT_EQ(rows.size(), 3u);
    const auto& measured = rows[2].at("comm_sent");  // a steady step
    const mics::sim::SimulatedStep sim =
        mics::sim::simulate_step(cfg, test_cluster(c.k), c.n / c.k, "mics", rank);
    double total = 0;
    for (int kind = 0; kind < 2; ++kind)
      for (int op = 0; op < 3; ++op)
        for (int tier = 0; tier < 2; ++tier) {
          const double mpi = measured[mics::name(static_cast<mics::GroupKind>(kind))]
                                     [mics::name(static_cast<mics::CollectiveOp>(op))]
                                     [mics::name(static_cast<mics::LinkTier>(tier))].get<double>();
          EXPECT_EQ(sim.bytes.sent[kind][op][tier], mpi)
              << "rank " << rank << " " << mics::name(static_cast<mics::GroupKind>(kind)) << " "
              << mics::name(static_cast<mics::CollectiveOp>(op)) << " " << mics::name(static_cast<mics::LinkTier>(tier));
          total += mpi;
        }
    EXPECT_GT(total, 0.0) << "rank " << rank;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, SimulatedBytes,
                         ::testing::Values(Placement{"gpt", 8, 2, 4, "false", "two_hop"},
                                           Placement{"gpt", 8, 2, 8, "true", "two_hop"},
                                           Placement{"bert", 8, 4, 2, "auto", "every_microstep"},
                                           Placement{"bert", 8, 2, 4, "true", "two_hop"}),
                         [](const auto& info) {
                           const Placement& c = info.param;
                           char name[96];
                           std::snprintf(name, sizeof name, "%s_n%d_k%d_p%d_hier_%s_%s", c.model, c.n, c.k, c.p,
                                         c.hierarchical, c.sync);
                           return std::string(name);
                         });

mics::Config bert_10b() { return mics::load_config(source_path("configs/bert-10b.json")); }

TEST(Simulator, IsDeterministic) {
  const mics::sim::ClusterSpec p3dn = mics::sim::load_cluster(source_path("configs/clusters/p3dn.json"));
  mics::sim::SweepRequest request;
  request.nodes = {2, 4};
  const auto a = mics::sim::simulate_sweep(bert_10b(), p3dn, request);
  const auto b = mics::sim::simulate_sweep(bert_10b(), p3dn, request);
  ASSERT_EQ(a.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step_s, b[i].step_s) << i;
    EXPECT_EQ(a[i].time.exposed_total(), b[i].time.exposed_total()) << i;
    EXPECT_GT(a[i].step_s, 0.0);
  }
}

// Two-hop: each layer's all-reduce across replicas starts when the layer lands in the last
// micro-step, so part of it hides behind the rest of that backward. Data parallel (p = 1,
// every GPU a replica) shows it cleanly: its only collective is that all-reduce.
TEST(Simulator, ReplicationAllReduceOverlapsTheLastBackward) {
  const mics::sim::ClusterSpec p3dn = mics::sim::load_cluster(source_path("configs/clusters/p3dn.json"));
  const auto dp = mics::sim::simulate_step(bert_10b(), p3dn, 2, "dp");
  const int all_reduce = static_cast<int>(mics::CollectiveOp::all_reduce);
  const double busy = dp.time.comm_total(all_reduce), exposed = dp.time.exposed_total(all_reduce);
  EXPECT_GT(busy, 1.0);  // seconds: 10B fp32 gradients over 100 Gbit/s shared by 8 GPUs
  EXPECT_GT(exposed, 0.0);
  EXPECT_LT(exposed, 0.75 * busy) << "the all-reduce should hide partly behind the last micro-step's backward";
}

// mics.replication_dtype "compute": the all-reduce across replicas moves the half-precision
// shard, half the bytes of the fp32 accumulator, and its time shrinks with them; nothing
// else changes.
TEST(Simulator, HalfPrecisionReplicationHalvesItsBytes) {
  const mics::sim::ClusterSpec p3dn = mics::sim::load_cluster(source_path("configs/clusters/p3dn.json"));
  mics::Config config = bert_10b();  // fp16
  config.mics.replication_dtype = "fp32";
  const auto wide = mics::sim::simulate_step(config, p3dn, 4, "mics");
  config.mics.replication_dtype = "compute";
  const auto narrow = mics::sim::simulate_step(config, p3dn, 4, "mics");
  const auto all_reduce = mics::CollectiveOp::all_reduce, all_gather = mics::CollectiveOp::all_gather;
  ASSERT_GT(wide.bytes.bytes(all_reduce), 1e9);
  EXPECT_EQ(narrow.bytes.bytes(all_reduce), wide.bytes.bytes(all_reduce) / 2);
  EXPECT_EQ(narrow.bytes.bytes(all_gather), wide.bytes.bytes(all_gather));
  EXPECT_LT(narrow.time.comm_total(static_cast<int>(all_reduce)), 0.6 * wide.time.comm_total(static_cast<int>(all_reduce)));
  EXPECT_LT(narrow.step_s, wide.step_s);
}

double seconds_to_simulate(const mics::Config& config, const mics::sim::ClusterSpec& cluster, int nodes) {
  const auto start = std::chrono::steady_clock::now();
  mics::sim::SweepRequest request;
  request.nodes = {nodes};
  mics::sim::simulate_sweep(config, cluster, request);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Acceptance limits of the issue, far from the measured times (milliseconds), so the
// check cannot flake on a busy machine.
TEST(Simulator, TinyIsWellUnderASecondAndBert10bAt128GpusUnderTenSeconds) {
  const mics::sim::ClusterSpec p3dn = mics::sim::load_cluster(source_path("configs/clusters/p3dn.json"));
  EXPECT_LT(seconds_to_simulate(mics::load_config(source_path("configs/bert-tiny.json")), p3dn, 2), 1.0);
  EXPECT_LT(seconds_to_simulate(bert_10b(), p3dn, 16), 10.0);
}

// The ring formulas of docs/references.md: an all-gather over p ranks moves (p-1) chunks per
// rank; across nodes the per-step time is set by the node's network shared by its flows.
TEST(CostModel, RingAllGatherFollowsTheAlphaBetaFormula) {
  const mics::sim::ClusterSpec c = test_cluster(4);
  const double bytes = 64e6;
  mics::sim::RingShape inside{4, false, 1, 0, 4};
  const auto t_in = mics::sim::collective_time(c, inside, mics::CollectiveOp::all_gather, bytes);
  EXPECT_DOUBLE_EQ(t_in.seconds, 3 * (2e-6 + bytes / 4 / 100e9));
  EXPECT_EQ(t_in.bottleneck, mics::LinkTier::intra_node);
  mics::sim::RingShape across{8, true, 2, 1, 4};
  const auto t_out = mics::sim::collective_time(c, across, mics::CollectiveOp::all_gather, bytes);
  EXPECT_DOUBLE_EQ(t_out.seconds, 7 * (10e-6 + bytes / 8 / 12.5e9));
  EXPECT_EQ(t_out.bottleneck, mics::LinkTier::inter_node);
  // Four rails leaving each node share its network: four times the transfer term.
  mics::sim::RingShape rails{2, true, 2, 4, 1};
  const auto t_rails = mics::sim::collective_time(c, rails, mics::CollectiveOp::all_gather, bytes);
  EXPECT_DOUBLE_EQ(t_rails.seconds, 1 * (10e-6 + bytes / 2 * 4 / 12.5e9));
}

TEST(CostModel, TreeAllReduceWinsOnlyWhenLatencyDominates) {
  const mics::sim::ClusterSpec c = test_cluster(1);
  mics::sim::RingShape many_nodes{64, true, 64, 1, 1};
  const double ring_small = 2 * 63 * (10e-6 + 1e3 / 64 / 12.5e9);
  const auto small = mics::sim::collective_time(c, many_nodes, mics::CollectiveOp::all_reduce, 1e3);
  EXPECT_LT(small.seconds, ring_small);  // tree: 2 * 6 latencies instead of 126
  const double big_bytes = 1e9;
  const auto big = mics::sim::collective_time(c, many_nodes, mics::CollectiveOp::all_reduce, big_bytes);
  EXPECT_DOUBLE_EQ(big.seconds, 2 * 63 * (10e-6 + big_bytes / 64 / 12.5e9));  // ring
}

// The topology-derived ring shapes: a partition group of 8 over 2 nodes of 4 has one ring
// edge leaving each node; its hierarchical rails have four, one per local rank.
TEST(CostModel, RingShapesCountTheFlowsThroughANodesNetwork) {
  const mics::Topology t = mics::make_topology(0, 16, 4, 8, "true");
  auto of = [&](auto members) {
    return mics::sim::ring_shape(t, [&](int r) {
      mics::Topology u = t;
      u.rank = r;
      return members(u);
    });
  };
  const auto partition = of([](const mics::Topology& u) { return u.partition_members(); });
  EXPECT_EQ(partition.size, 8);
  EXPECT_EQ(partition.nodes, 2);
  EXPECT_EQ(partition.flows_per_nic, 1);
  const auto rail = of([](const mics::Topology& u) { return u.inter_node_members(); });
  EXPECT_EQ(rail.size, 2);
  EXPECT_EQ(rail.flows_per_nic, 4);
  const auto intra = of([](const mics::Topology& u) { return u.intra_node_members(); });
  EXPECT_FALSE(intra.spans_nodes);
  EXPECT_EQ(intra.flows_per_nic, 0);
  const auto replication = of([](const mics::Topology& u) { return u.replication_members(); });
  EXPECT_EQ(replication.size, 2);  // ranks 0 and 8, on nodes 0 and 2
  EXPECT_EQ(replication.flows_per_nic, 4);
}

// The hierarchical gather's second stage, submitted with its dependency right after the
// first (the device keeps the order, as on NCCL streams), begins on the NVLink lane the
// moment the first ends, however long the host computes in between; the first stage's
// request is consumed. A host-ordered start would begin at the host's next poll instead.
TEST(SimCommunicator, AGatherAfterAnotherBeginsWhenThatOneEnds) {
  const mics::sim::ClusterSpec c = test_cluster(4);
  const mics::Topology t = mics::make_topology(0, 16, 4, 8, "true");
  mics::sim::Timeline timeline;
  mics::CommStats stats;
  const mics::sim::RingShape rail{2, true, 2, 4, 1}, intra{4, false, 1, 0, 4};
  auto inter_comm = mics::sim::make_sim_communicator(t, t.inter_node_members(), rail, mics::GroupKind::partition, c,
                                                     timeline, stats);
  auto intra_comm = mics::sim::make_sim_communicator(t, t.intra_node_members(), intra, mics::GroupKind::partition, c,
                                                     timeline, stats);
  ASSERT_TRUE(intra_comm->orders_on_device());
  const size_t chunk = 1 << 20;  // bf16 elements per rank
  mics::Request first = inter_comm->all_gather(nullptr, mics::DType::bf16, chunk, 1, 4 * chunk, 0);
  mics::Request second = intra_comm->all_gather_after(first, nullptr, mics::DType::bf16, chunk, 2, chunk, 4 * chunk);
  EXPECT_EQ(first, nullptr);
  const double t_first = mics::sim::collective_time(c, rail, mics::CollectiveOp::all_gather, 2.0 * chunk * 2).seconds;
  const double t_second = mics::sim::collective_time(c, intra, mics::CollectiveOp::all_gather, 4.0 * 2 * chunk * 2).seconds;
  ASSERT_GT(t_first, 0.0);
  timeline.compute_s = 0.5 * t_first;  // the host moves on before the first stage ends
  intra_comm->wait(second);
  EXPECT_DOUBLE_EQ(timeline.compute_s, t_first + t_second);
  EXPECT_DOUBLE_EQ(timeline.lane_free_s[0], t_first + t_second);
}

TEST(ClusterFiles, EveryShippedFileLoadsAndAFileWithoutSourcesIsRefused) {
  const std::pair<const char*, int> files[] = {{"p3dn", 70}, {"p4d", 80}, {"p4de", 80}, {"h100", 90}};
  for (auto [name, compute_capability] : files) {
    const auto c = mics::sim::load_cluster(source_path(std::string("configs/clusters/") + name + ".json"));
    EXPECT_EQ(c.gpus_per_node, 8) << name;
    EXPECT_EQ(c.compute_capability, compute_capability) << name;
  }
  TempDir dir("cluster");
  const std::string bad = dir.file("bad.json");
  std::FILE* f = std::fopen(bad.c_str(), "w");
  std::fputs(R"({"name": "x", "description": "x", "gpus_per_node": {"value": 8}})", f);
  std::fclose(f);
  try {
    mics::sim::load_cluster(bad);
    FAIL() << "a quantity without its source was accepted";
  } catch (const mics::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'gpus_per_node.source' is missing"), std::string::npos) << e.what();
  }
}

// A config's "auto" settings resolve for the cluster's GPU when it is planned or simulated
// (a V100 cluster runs fp16 and keeps the attention probabilities; an H100's bf16 and
// cuDNN's fused attention), and the table says which.
TEST(Simulator, AutoSettingsFollowTheClustersGpu) {
  mics::Config config = bert_10b();
  config.train.precision = "auto";
  config.runtime.attention = "auto";
  config = mics::parse_config(config.to_json(), "bert-10b-auto.json");  // resolved here: no GPU
  const auto p3dn = mics::sim::load_cluster(source_path("configs/clusters/p3dn.json"));
  const auto h100 = mics::sim::load_cluster(source_path("configs/clusters/h100.json"));
  const mics::Config v100 = mics::resolved_for_gpu(config, p3dn.compute_capability, p3dn.gpu_name);
  EXPECT_EQ(v100.train.precision, "fp16");
  EXPECT_EQ(v100.runtime.attention, "materialized");
  EXPECT_NE(v100.runtime.attention_reason.find("GPU compute capability 7.0"), std::string::npos)
      << v100.runtime.attention_reason;
  const mics::Config hopper = mics::resolved_for_gpu(config, h100.compute_capability, h100.gpu_name);
  EXPECT_EQ(hopper.train.precision, "bf16");
  EXPECT_EQ(hopper.runtime.attention, "cudnn");
  // Explicit settings are the config's to keep.
  const mics::Config pinned = mics::resolved_for_gpu(bert_10b(), p3dn.compute_capability, p3dn.gpu_name);
  EXPECT_EQ(pinned.train.precision, "fp16");
  EXPECT_EQ(pinned.runtime.attention, "materialized");
  const mics::Config unknown_gpu = mics::resolved_for_gpu(hopper, 0, "");  // 0: nothing known, nothing changes
  EXPECT_EQ(unknown_gpu.runtime.attention, "cudnn");

  mics::sim::SweepRequest request;
  request.nodes = {1};
  request.modes = {"mics"};
  const std::string table = mics::sim::format_table(v100, p3dn, mics::sim::simulate_sweep(v100, p3dn, request));
  EXPECT_NE(table.find("fp16, materialized attention"), std::string::npos) << table;
}

// "auto" is the smallest p whose plan, at the config's micro-batch and checkpointing, fits.
TEST(MemoryPlanner, AutoPicksTheSmallestPartitionThatFits) {
  const double budget = 80.0 * (1 << 30);
  for (bool checkpointing : {false, true}) {
    mics::Config config = bert_10b();
    config.train.activation_checkpointing = checkpointing;
    const int64_t p = mics::auto_partition_size(config, 64, 8, 80.0);
    EXPECT_LE(mics::plan_memory(config, 64, p, 8, checkpointing).total(), budget) << checkpointing;
    EXPECT_GT(mics::plan_memory(config, 64, p / 2, 8, checkpointing).total(), budget) << checkpointing;
  }
  // Checkpointing keeps one block's activations (and every block's input) instead of all.
  const mics::Config config = bert_10b();
  EXPECT_LT(mics::plan_memory(config, 64, 8, 8, true).activations * 10, mics::plan_memory(config, 64, 8, 8, false).activations);
}

// Bad simulation requests: exit 2 with one line naming the flag or key, before any work.
// What the start-up memory check tells a user whose plan does not fit: only knobs whose own
// plan fits, each with its size; and plainly when nothing does.
TEST(MemoryPlanner, AdviceNamesOnlyKnobsThatFit) {
  mics::Config config = bert_10b();
  config.train.activation_checkpointing = false;
  const double budget = 80.0 * (1 << 30);  // an H100
  ASSERT_GT(mics::plan_memory(config, 64, 2, 8, false).total(), budget);
  const std::string advice = mics::memory_fit_advice(config, 2, 64, budget);
  EXPECT_EQ(advice.rfind("any of these fits: ", 0), 0u) << advice;
  // The smallest larger partition size dividing 64 that fits, and no other.
  int64_t expected = 0;
  for (int64_t q = 4; q <= 64 && expected == 0; q *= 2)
    if (mics::plan_memory(config, 64, q, 8, false).total() <= budget) expected = q;
  ASSERT_GT(expected, 0);
  EXPECT_NE(advice.find("'mics.partition_size' " + std::to_string(expected) + " ("), std::string::npos) << advice;
  const bool ckpt_fits = mics::plan_memory(config, 64, 2, 8, true).total() <= budget;
  EXPECT_EQ(advice.find("'train.activation_checkpointing' true") != std::string::npos, ckpt_fits) << advice;

  // One rank, 80 GiB: nothing fits here; the advice names the smallest partition that would.
  const std::string none = mics::memory_fit_advice(config, 1, 1, budget);
  EXPECT_EQ(none.rfind("nothing fits on 1 rank", 0), 0u) << none;
  int64_t needed = 0;
  for (int64_t q = 2; q <= 4096 && needed == 0; q *= 2)
    if (mics::plan_memory(config, 64, q, 8, false).total() <= budget) needed = q;
  ASSERT_GT(needed, 0);
  EXPECT_NE(none.find("'mics.partition_size' " + std::to_string(needed) + " would ("), std::string::npos) << none;
  EXPECT_NE(none.find("needs at least " + std::to_string(needed) + " ranks"), std::string::npos) << none;
  // A budget below one micro-batch's activations: nothing helps, and the advice says why.
  const std::string never = mics::memory_fit_advice(config, 1, 1, 1.0 * (1 << 20));
  EXPECT_NE(never.find("activations alone exceed the budget"), std::string::npos) << never;
  EXPECT_NE(mics::describe_plan(mics::plan_memory(config, 64, 4, 8, false)).find("activations"), std::string::npos);
}

// train.keep_ffn_output keeps one activation more per BERT block: where the plan fits only
// without it, the advice says so (and not where it fits either way, nor without it).
TEST(MemoryPlanner, AdviceNamesDroppingTheKeptFfnOutput) {
  mics::Config config = bert_10b();
  config.train.activation_checkpointing = true;
  config.train.keep_ffn_output = true;
  const double kept = mics::plan_memory(config, 8, 8, 8, true).total();
  mics::Config lean = config;
  lean.train.keep_ffn_output = false;
  const double without = mics::plan_memory(lean, 8, 8, 8, true).total();
  ASSERT_GT(kept, without + (1 << 30)) << "one [micro-batch x seq x hidden] more per block";
  const std::string advice = mics::memory_fit_advice(config, 8, 8, (kept + without) / 2);
  char gib[32];
  std::snprintf(gib, sizeof gib, "%.2f", without / (1024.0 * 1024.0 * 1024.0));
  EXPECT_NE(advice.find("'train.keep_ffn_output' false (" + std::string(gib) + " GiB)"), std::string::npos) << advice;
  EXPECT_EQ(mics::memory_fit_advice(lean, 8, 8, (kept + without) / 2).find("keep_ffn_output"), std::string::npos);
  EXPECT_EQ(mics::memory_fit_advice(config, 8, 8, without - (1 << 30)).find("keep_ffn_output"), std::string::npos);
}

// One rank at p = 1 keeps no fp32 accumulator and no per-layer gradient buffers: the model's
// gradient, in its compute dtype, is what the optimizer reads. Replicas, or a half-precision
// model summing micro-steps, bring the fp32 accumulator back (and replicas the half-precision
// shard of the all-reduce across them).
TEST(MemoryPlanner, OneRankPlansItsGradientsInPlace) {
  mics::Config config = bert_10b();
  config.train.precision = "bf16";
  config.train.global_batch_size = 0;  // one micro-step per step
  const int64_t mb = config.train.micro_batch_size;
  const mics::MemoryPlan alone = mics::plan_memory(config, 1, 1, mb, false);
  const mics::MemoryPlan replicated = mics::plan_memory(config, 2, 1, mb, false);
  EXPECT_TRUE(alone.grads_in_place);
  EXPECT_FALSE(replicated.grads_in_place);
  EXPECT_DOUBLE_EQ(alone.grads * 2, replicated.grads);  // bf16 in place, fp32 accumulated
  EXPECT_EQ(alone.grad_buffers, 0.0);
  EXPECT_GT(replicated.grad_buffers, 0.0);
  // bert-10b sends the two-hop all-reduce in the compute dtype: a shard buffer only with replicas.
  ASSERT_EQ(config.mics.replication_dtype, "compute");
  EXPECT_EQ(alone.replication, 0.0);
  EXPECT_DOUBLE_EQ(replicated.replication, replicated.grads / 2);
  EXPECT_DOUBLE_EQ(replicated.total() - alone.total(),
                   replicated.grads / 2 + replicated.grad_buffers + replicated.replication);
  config.train.global_batch_size = 2 * mb;  // two micro-steps: summed in fp32
  EXPECT_FALSE(mics::plan_memory(config, 1, 1, mb, false).grads_in_place);
  config.train.precision = "fp32";  // fp32 gradients add up in place across micro-steps
  const mics::MemoryPlan fp32 = mics::plan_memory(config, 1, 1, mb, false);
  EXPECT_TRUE(fp32.grads_in_place);
  EXPECT_DOUBLE_EQ(fp32.grads, fp32.master);
  config.mics.partition_size = 1;
  const std::string report = mics::dry_run_report(config, 1, 1, 1);
  EXPECT_NE(report.find("fp32 gradients (in place, 1 rank)"), std::string::npos) << report;
  EXPECT_EQ(report.find("gradient buffers"), std::string::npos) << report;
}

// The CUDA backend pads a vocabulary projection of awkward width (GPT-2's 50257 tokens): the
// plan counts the padded weight and the logits rows; a width that is a
// multiple of 8 half-precision elements, or the CPU backend, needs none.
TEST(MemoryPlanner, CountsTheCudaBackendsPaddedVocabularyProjection) {
  mics::Config config = bert_10b();
  config.train.precision = "bf16";
  config.runtime.backend = "cuda";
  config.model.vocab_size = 50257;
  const int64_t rows = config.train.micro_batch_size * config.train.seq_len;
  const mics::MemoryPlan plan = mics::plan_memory(config, 64, 8, config.train.micro_batch_size, false);
  EXPECT_DOUBLE_EQ(plan.gemm_staging, 2.0 * 50264 * (config.model.hidden + rows));
  EXPECT_NE(mics::describe_plan(plan).find("padded vocabulary projection"), std::string::npos);
  config.model.vocab_size = 50264;
  EXPECT_EQ(mics::plan_memory(config, 64, 8, config.train.micro_batch_size, false).gemm_staging, 0.0);
  config.model.vocab_size = 50257;
  config.runtime.backend = "cpu";
  config.train.precision = "fp32";
  EXPECT_EQ(mics::plan_memory(config, 64, 8, config.train.micro_batch_size, false).gemm_staging, 0.0);
}

// The CUDA backend's workspaces are planned: cuBLASLt's, and with cuDNN's attention its
// deterministic backward's (dP and the softmax sums, B x H x T x (2T + 4) bytes, plus 16
// MiB), or past the 1 GiB budget the nondeterministic one's (an fp32 dQ and the sums,
// B x H x T x (4D + 4) bytes, plus 16 MiB); the CPU needs none.
TEST(MemoryPlanner, CountsTheCudaBackendsWorkspaces) {
  mics::Config config = bert_10b();
  config.train.precision = "bf16";
  config.runtime.backend = "cuda";
  config.runtime.attention = "materialized";
  const int64_t mb = config.train.micro_batch_size, t = config.train.seq_len, h = config.model.heads;
  const int64_t d = config.model.hidden / h;
  const double gemm = 32.0 * (1 << 20), headroom = 16.0 * (1 << 20);
  mics::MemoryPlan plan = mics::plan_memory(config, 64, 8, mb, false);
  EXPECT_DOUBLE_EQ(plan.gemm_workspace, gemm);
  EXPECT_DOUBLE_EQ(plan.attention_workspace, 0.0);
  config.runtime.overlap_weight_grads = true;  // a second cuBLASLt workspace for their stream
  EXPECT_DOUBLE_EQ(mics::plan_memory(config, 64, 8, mb, false).gemm_workspace, 2 * gemm);
  config.runtime.overlap_weight_grads = false;
  config.runtime.attention = "cudnn";
  plan = mics::plan_memory(config, 64, 8, mb, false);
  const double dp = static_cast<double>(mb * h * t) * static_cast<double>(2 * t + 4);
  ASSERT_LE(dp + headroom, static_cast<double>(mics::kCudnnDeterministicWorkspaceBudget));
  EXPECT_DOUBLE_EQ(plan.attention_workspace, dp + headroom);
  EXPECT_DOUBLE_EQ(mics::plan_memory(config, 64, 8, 2 * mb, false).attention_workspace,
                   2 * dp + headroom);  // the planner's other micro-batches
  EXPECT_NE(mics::describe_plan(plan).find("workspaces"), std::string::npos);
  EXPECT_DOUBLE_EQ(plan.total(), plan.model_states() + plan.gathered + plan.grad_buffers + plan.replication +
                                     plan.activations + plan.gemm_staging + gemm + dp + headroom);
  config.runtime.cudnn_deterministic = false;  // the nondeterministic one, asked for
  EXPECT_DOUBLE_EQ(mics::plan_memory(config, 64, 8, mb, false).attention_workspace,
                   static_cast<double>(mb * h * t) * static_cast<double>(4 * d + 4) + headroom);
  config.runtime.cudnn_deterministic = true;
  config.train.seq_len = 4096;  // dP of 8 x 40 x 4096^2 x 2 bytes: 10 GiB, past the budget
  EXPECT_DOUBLE_EQ(mics::plan_memory(config, 64, 8, mb, false).attention_workspace,
                   static_cast<double>(mb * h * 4096) * static_cast<double>(4 * d + 4) + headroom);
  config.runtime.backend = "cpu";
  config.train.precision = "fp32";
  EXPECT_EQ(mics::plan_memory(config, 64, 8, mb, false).workspace(), 0.0);
}

TEST(SimulateCli, BadRequestsAreRefusedByName) {
  TempDir dir("simcli");
  const std::string base = "--config " + source_path("configs/bert-10b.json");
  const std::string p3dn = " --simulate " + source_path("configs/clusters/p3dn.json");
  const std::string folder_csv = dir.file("folder.csv");
  std::filesystem::create_directory(folder_csv);
  const struct {
    std::string args, message;
  } cases[] = {
      {base + p3dn + " --nodes 0", "--nodes: must be a positive integer"},
      {base + p3dn + " --nodes 3 --modes mics --set mics.partition_size=16",
       "--nodes 3 (24 GPUs), mode mics: 'mics.partition_size' (16) must divide"},
      {base + p3dn + " --out " + dir.file("x.txt"), "--out '" + dir.file("x.txt") + "' must end in .csv or .json"},
      {base + p3dn + " --out " + folder_csv, "--out " + folder_csv + " exists and is not a regular file"},
      {base + p3dn + " --modes mics,fsdp", "--modes: fsdp not in {mics,zero3,dp}"},
      {base + " --cluster " + source_path("configs/clusters/p3dn.json"), "--cluster goes with --dry-run"},
      {base + " --nodes 2", "--nodes, --modes, --out and --per-gpu-batch go with --simulate"},
  };
  for (const auto& c : cases) {
    const auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("simulated:"), std::string::npos) << "work done before refusing: " << c.args;
  }
}

// The CSV's fields are quoted where they must be: a config path with a comma stays one field.
TEST(SimulateCli, CsvQuotesAFieldWithAComma) {
  TempDir dir("simcsv");
  const std::string config = dir.file("bert,10b.json");
  std::filesystem::copy_file(source_path("configs/bert-10b.json"), config);
  const auto r = run_cli("--config '" + config + "' --simulate " + source_path("configs/clusters/p3dn.json") +
                         " --nodes 2 --modes mics --out " + dir.file("r.csv"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(dir.file("r.csv"));
  std::string header, row;
  ASSERT_TRUE(std::getline(in, header) && std::getline(in, row));
  EXPECT_EQ(row.rfind("\"" + config + "\",", 0), 0u) << row;
  // Fields: the commas outside quotes, as a CSV reader counts them.
  const auto fields = [](const std::string& line) {
    size_t n = 1;
    bool quoted = false;
    for (const char c : line) {
      if (c == '"') quoted = !quoted;
      n += c == ',' && !quoted;
    }
    return n;
  };
  EXPECT_EQ(fields(row), fields(header));
}

}  // namespace
