// Communication benchmark of the MiCS runtime's collectives, nccl-tests style: for each
// message size, the median over iterations of the slowest rank's time, algorithm bandwidth
// (S/t) and bus bandwidth (S/t scaled by (n-1)/n for all-gather and reduce-scatter,
// 2(n-1)/n for all-reduce), S being the full array in bytes, GB = 1e9 bytes.
//   mpirun -np 8 build/mics-bench-comm --ranks-per-node 2 [--partition-size 8] [--json out.json]
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/process_groups.h"
#include "engine/topology.h"

namespace {

using namespace mics;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times `op` (start + wait) `iters` times after `warmup` runs; returns the median of the
// slowest rank's time per iteration.
double time_op(const std::function<void()>& op, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) op();
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    op();
    double t = MPI_Wtime() - start;
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(t);
  }
  return median(times);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mics-bench-comm: times the MiCS collectives over message sizes"};
  int k = 0, p = 0, warmup = 3, iters = 20;
  size_t min_bytes = 1 << 12, max_bytes = 1 << 24;
  std::string json_path;
  app.add_option("--ranks-per-node", k, "ranks per (emulated) node; default: detected");
  app.add_option("--partition-size", p, "ranks in a partition group; default: all");
  app.add_option("--min-bytes", min_bytes, "smallest full message in bytes");
  app.add_option("--max-bytes", max_bytes, "largest full message in bytes");
  app.add_option("--warmup", warmup, "untimed runs per size");
  app.add_option("--iters", iters, "timed runs per size")->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "also write the table as JSON");
  CLI11_PARSE(app, argc, argv);

  MPI_Init(&argc, &argv);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (k == 0) {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &k);
    MPI_Comm_free(&node);
  }
  if (p == 0) p = world;
  nlohmann::json rows = nlohmann::json::array();
  try {
    const Topology flat = make_topology(rank, world, k, p, "false");
    auto g = build_mpi_groups(flat);
    std::unique_ptr<ProcessGroups> h;
    Topology hier = flat;
    if (p > k) {
      hier = make_topology(rank, world, k, p, "true");
      h = build_mpi_groups(hier);
    }
    if (rank == 0) {
      std::printf("# %s, world %d\n", flat.describe().c_str(), world);
      std::printf("# %-24s %6s %12s %12s %10s %10s\n", "collective", "ranks", "size (B)", "time (us)",
                  "algbw GB/s", "busbw GB/s");
    }
    const size_t align = static_cast<size_t>(p) * sizeof(float);
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
      const size_t full = std::max(align, bytes / align * align) / sizeof(float);  // elements
      const size_t chunk = full / static_cast<size_t>(p);
      std::vector<float> a(full, 1.0f), b(full, 1.0f), shard(chunk);
      const int r = flat.replicas();
      struct Case {
        const char* name;
        int n;
        double bus;  // busbw factor
        double full_bytes;
        std::function<void()> op;
      };
      std::vector<Case> cases = {
          {"all_gather", p, (p - 1.0) / p, full * 4.0,
           [&] { Request q = g->partition->all_gather(a.data(), chunk, 1, chunk, 0); g->partition->wait(q); }},
          {"reduce_scatter", p, (p - 1.0) / p, full * 4.0,
           [&] { Request q = g->partition->reduce_scatter(a.data(), shard.data(), chunk); g->partition->wait(q); }},
          {"all_reduce", p, 2.0 * (p - 1.0) / p, full * 4.0,
           [&] { Request q = g->partition->all_reduce(b.data(), full); g->partition->wait(q); }},
      };
      if (r > 1)
        cases.push_back({"all_reduce (replicas)", r, 2.0 * (r - 1.0) / r, chunk * 4.0,
                         [&] { Request q = g->replication->all_reduce(shard.data(), chunk); g->replication->wait(q); }});
      if (h) {
        const size_t kk = static_cast<size_t>(k), n = static_cast<size_t>(hier.nodes_per_partition());
        cases.push_back({"all_gather hierarchical", p, (p - 1.0) / p, full * 4.0, [&, kk, n] {
                           Request q = h->inter_node->all_gather(a.data() + static_cast<size_t>(hier.local_rank()) * chunk,
                                                                 chunk, 1, kk * chunk, 0);
                           h->inter_node->wait(q);
                           q = h->intra_node->all_gather(a.data(), chunk, n, chunk, kk * chunk);
                           h->intra_node->wait(q);
                         }});
      }
      for (const Case& c : cases) {
        const double t = time_op(c.op, warmup, iters);
        const double algbw = c.full_bytes / t / 1e9;
        if (rank == 0) {
          std::printf("  %-24s %6d %12.0f %12.1f %10.3f %10.3f\n", c.name, c.n, c.full_bytes, t * 1e6, algbw,
                      algbw * c.bus);
          rows.push_back({{"collective", c.name}, {"ranks", c.n}, {"bytes", c.full_bytes}, {"time_us", t * 1e6},
                          {"algbw_gbps", algbw}, {"busbw_gbps", algbw * c.bus}});
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mics-bench-comm: error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  if (rank == 0 && !json_path.empty()) std::ofstream(json_path) << rows.dump(1) << '\n';
  MPI_Finalize();
  return 0;
}
