// Collectives of the MiCS runtime under mpirun (8 ranks, emulated nodes): the hierarchical
// gather lays out the layer exactly as the flat one, and the two-hop gradient sync gives
// exactly the global sum on exactly summable inputs (small integers in floats).
//
// Built twice: over MPI's communicator (test_collectives), and with MICS_OVER_EMULATED_NCCL
// over NCCL's, with NCCL and the CUDA runtime emulated over MPI on host memory
// (test_collectives_emulated_nccl; tests/emulation/nccl_emulator.cpp).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/process_groups.h"
#include "engine/sharded_param_store.h"
#include "engine/topology.h"
#include "kernels/ops.h"
#include "model/param_layout.h"
#include "tests/dist/groups_under_test.h"

namespace {

using namespace mics;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Shard j of a layer of p*chunk elements holds the integers j*chunk + i.
std::vector<float> gathered_layer(const Topology& t, ProcessGroups& g, size_t chunk) {
  const int p = t.partition_size;
  std::vector<float> layer(chunk * static_cast<size_t>(p), -1.0f);
  const size_t own = static_cast<size_t>(t.shard_index()) * chunk;
  for (size_t i = 0; i < chunk; ++i) layer[own + i] = static_cast<float>(own + i);
  if (t.hierarchical) {
    const size_t k = static_cast<size_t>(t.ranks_per_node);
    Request r = g.inter_node->all_gather(layer.data() + static_cast<size_t>(t.local_rank()) * chunk,
                                         chunk, 1, k * chunk, 0);
    g.inter_node->wait(r);
    r = g.intra_node->all_gather(layer.data(), chunk, static_cast<size_t>(t.nodes_per_partition()),
                                 chunk, k * chunk);
    g.intra_node->wait(r);
  } else {
    Request r = g.partition->all_gather(layer.data(), chunk, 1, chunk, 0);
    g.partition->wait(r);
  }
  return layer;
}

struct Shape {
  int k, p;
};

class Collectives : public ::testing::TestWithParam<Shape> {
 protected:
  void TearDown() override { expect_no_misuse(); }
};

TEST_P(Collectives, HierarchicalGatherEqualsFlatGather) {
  const Shape s = GetParam();
  const size_t chunk = 37;  // prime, so misplaced chunks cannot line up by accident
  const Topology flat = make_topology(world_rank(), world_size(), s.k, s.p, "false");
  auto flat_groups = groups_under_test(flat);
  const std::vector<float> a = gathered_layer(flat, *flat_groups, chunk);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], static_cast<float>(i)) << "flat, element " << i;
  if (s.p <= s.k) return;  // a group inside one node has no hierarchical gather
  const Topology hier = make_topology(world_rank(), world_size(), s.k, s.p, "true");
  auto hier_groups = groups_under_test(hier);
  const std::vector<float> b = gathered_layer(hier, *hier_groups, chunk);
  ASSERT_EQ(a, b);  // bit for bit
  // Same bytes per rank; across nodes (p-k)/p of the layer instead of (p-1)/p.
  EXPECT_EQ(flat_groups->stats.bytes(GroupKind::partition), hier_groups->stats.bytes(GroupKind::partition));
  double flat_inter = flat_groups->stats.bytes(LinkTier::inter_node);
  double hier_inter = hier_groups->stats.bytes(LinkTier::inter_node);
  MPI_Allreduce(MPI_IN_PLACE, &flat_inter, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hier_inter, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(hier_inter * (s.p - 1), flat_inter * (s.p - s.k));
  EXPECT_GT(flat_inter, 0.0);
}

TEST_P(Collectives, TwoHopSyncEqualsGlobalAllReduce) {
  const Shape s = GetParam();
  const Topology t = make_topology(world_rank(), world_size(), s.k, s.p, "auto");
  auto g = groups_under_test(t);
  const size_t chunk = 29, full = chunk * static_cast<size_t>(t.partition_size);
  // Two micro-steps of integer gradients per rank; every partial sum is exact in fp32.
  auto grad = [&](int micro, size_t i) { return static_cast<float>((world_rank() + 3 * micro + static_cast<int>(i)) % 17); };
  std::vector<float> shard(chunk, 0.0f), received(chunk);
  for (int micro = 0; micro < 2; ++micro) {
    std::vector<float> g_full(full);
    for (size_t i = 0; i < full; ++i) g_full[i] = grad(micro, i);
    Request r = g->partition->reduce_scatter(g_full.data(), received.data(), chunk);
    g->partition->wait(r);
    for (size_t i = 0; i < chunk; ++i) shard[i] += received[i];
  }
  Request r = g->replication->all_reduce(shard.data(), chunk);
  g->replication->wait(r);

  // One global all-reduce of the per-rank accumulated gradient, then this rank's shard.
  std::vector<float> global(full, 0.0f);
  for (int micro = 0; micro < 2; ++micro)
    for (size_t i = 0; i < full; ++i) global[i] += grad(micro, i);
  MPI_Allreduce(MPI_IN_PLACE, global.data(), static_cast<int>(full), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  for (size_t i = 0; i < chunk; ++i)
    ASSERT_EQ(shard[i], global[static_cast<size_t>(t.shard_index()) * chunk + i]) << "element " << i;
}

// The parameter store's prefetch: a layer gathered ahead but never acquired that step (the
// layers were used out of the recorded order) must not be handed out after the master
// weights change; it was gathered before the change.
TEST_P(Collectives, AnUnusedPrefetchIsNotServedAfterTheWeightsChange) {
  const Shape s = GetParam();
  if (s.p == 1) return;  // nothing gathered
  const Topology t = make_topology(world_rank(), world_size(), s.k, s.p, "auto");
  auto g = groups_under_test(t);
  model::ParamLayout::Builder b;
  for (int l = 0; l < 4; ++l) {
    const std::string index = std::to_string(l);
    b.begin_layer("layers." + index);
    b.add("w" + index, mics::Shape{300}, false, model::Init::zeros);
  }
  const model::ParamLayout layout = b.finish(model::shard_multiple_for(s.p));
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  StoreOptions options;
  options.prefetch = 1;
  ShardedParamStore store(*cpu, layout, t, {g->partition.get(), g->replication.get(), g->intra_node.get(),
                                            g->inter_node.get()}, options);
  // Master element i of this rank's shard: base + i + 100000 * shard index (exact in fp32).
  auto set_master = [&](float base) {
    float* m = store.master().ptr<float>();
    for (int64_t i = 0; i < store.shard_elements(); ++i)
      m[i] = base + static_cast<float>(i) + 100000.0f * static_cast<float>(t.shard_index());
  };
  auto use = [&](int layer) {
    store.acquire_params(layer);
    store.release_params(layer);
  };
  set_master(0.0f);
  store.begin_step(1);  // the order recorded: 0, 1, 2, 3
  for (int l = 0; l < 4; ++l) use(l);
  store.end_micro_step();
  store.begin_step(1);
  use(0);  // prefetches layer 1 ...
  use(2);  // ... which this step leaves unused
  store.end_micro_step();
  set_master(5000.0f);  // what an optimizer step does
  store.begin_step(1);
  use(0);
  const Tensor layer1 = store.acquire_params(1);
  const int64_t size = layout.layers()[1].size, chunk = size / s.p;
  const float* got = layer1.ptr<float>();
  for (int64_t j = 0; j < size; ++j) {
    const float want = 5000.0f + static_cast<float>(store.shard_offset(1) + j % chunk) +
                       100000.0f * static_cast<float>(j / chunk);
    ASSERT_EQ(got[j], want) << "element " << j << " of layer 1";
  }
  store.release_params(1);
  use(2);
  use(3);
  store.end_micro_step();
}

INSTANTIATE_TEST_SUITE_P(EightRanks, Collectives,
                         ::testing::Values(Shape{2, 2}, Shape{2, 4}, Shape{2, 8}, Shape{4, 8}, Shape{4, 4}, Shape{1, 8}),
                         [](const auto& info) {
                           char name[32];
                           std::snprintf(name, sizeof name, "k%d_p%d", info.param.k, info.param.p);
                           return std::string(name);
                         });

// wait_until is every wait on other ranks (MPI's, NCCL's collectives, NCCL's set-up, which
// runs on a thread apart): it returns once its condition holds, answering pings meanwhile.
TEST(WaitUntil, ReturnsOnceTheConditionHolds) {
  const auto start = std::chrono::steady_clock::now();
  auto after = [&](double seconds) {
    return [=] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds; };
  };
  wait_until(after(0.2), "a test condition", {});
  EXPECT_GE(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 0.2);
  world_barrier();  // every rank's wait over before the next test
}

// The deadline, one case per process (a wait that gives up ends the job's waits), run on
// 2 ranks by dist.wait_deadline_* (excluded from dist.collectives).
std::string give_up_waiting(const char* if_all_answer) {
  set_comm_timeout(1.0);
  try {
    wait_until([] { return false; }, "a test set-up", {}, if_all_answer);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no timeout)";
}

// Collective (every rank): the first communicator turns liveness pings on.
void answer_pings() {
  static CommStats stats;
  static auto world = make_mpi_communicator({0, 1}, GroupKind::replication, 1, stats);
}

TEST(WaitUntilDeadline, NamesTheRankThatNeverCame) {
  answer_pings();
  if (world_rank() == 1) {  // neither polls nor answers pings past rank 0's deadline and grace
    std::this_thread::sleep_for(std::chrono::seconds(4));
    return;
  }
  const std::string message = give_up_waiting("HINT");
  EXPECT_NE(message.find("a test set-up did not complete within 'runtime.comm_timeout_s' (1 s) on rank 0"),
            std::string::npos) << message;
  EXPECT_NE(message.find("rank 1 did not answer a liveness ping"), std::string::npos) << message;
  EXPECT_EQ(message.find("HINT"), std::string::npos) << message;
}

TEST(WaitUntilDeadline, SaysWhatToCheckWhenEveryRankAnswers) {
  answer_pings();
  const std::string message = give_up_waiting("check the network (HINT)");
  EXPECT_NE(message.find("did not complete within 'runtime.comm_timeout_s' (1 s) on rank " + std::to_string(world_rank())),
            std::string::npos) << message;
  EXPECT_NE(message.find("every rank answered a liveness ping within 1 s, so none is stalled: check the network (HINT)"),
            std::string::npos) << message;
}

}  // namespace

int main(int argc, char** argv) {
  init_mpi_under_test(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints; a failure on any rank still fails the run through its exit code.
  if (world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  if (end_groups_under_test() != 0) failed = 1;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
