#include "engine/sim/simulate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/flops.h"
#include "engine/memory_report.h"
#include "engine/process_groups.h"
#include "engine/replace_file.h"
#include "engine/sim/sim_backend.h"
#include "engine/sim/sim_communicator.h"
#include "engine/topology.h"
#include "engine/trainer.h"

namespace mics::sim {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// This rank's communicators on the simulated cluster, each with the ring shape of its
// whole family of groups.
std::unique_ptr<ProcessGroups> build_sim_groups(const Topology& topo, const ClusterSpec& cluster, Timeline& timeline) {
  auto g = std::make_unique<ProcessGroups>();
  auto make = [&](auto members_of, GroupKind kind) {
    const auto family = [&](int r) {
      Topology t = topo;
      t.rank = r;
      return members_of(t);
    };
    return make_sim_communicator(topo, members_of(topo), ring_shape(topo, family), kind, cluster, timeline,
                                 g->stats);
  };
  g->partition = make([](const Topology& t) { return t.partition_members(); }, GroupKind::partition);
  g->replication = make([](const Topology& t) { return t.replication_members(); }, GroupKind::replication);
  if (topo.hierarchical) {
    g->intra_node = make([](const Topology& t) { return t.intra_node_members(); }, GroupKind::partition);
    g->inter_node = make([](const Topology& t) { return t.inter_node_members(); }, GroupKind::partition);
  }
  std::vector<int> everyone(static_cast<size_t>(topo.world));
  for (int r = 0; r < topo.world; ++r) everyone[static_cast<size_t>(r)] = r;
  g->world = make_sim_communicator(topo, everyone, RingShape{}, GroupKind::replication, cluster, timeline, g->stats);
  return g;
}

// Quiet while the trainers are built: the table is the output.
struct QuietLog {
  spdlog::level::level_enum saved = spdlog::get_level();
  QuietLog() { spdlog::set_level(spdlog::level::warn); }
  ~QuietLog() { spdlog::set_level(saved); }
};

}  // namespace

SimulatedStep simulate_step(const Config& config, const ClusterSpec& cluster, int nodes, const std::string& mode,
                            int rank) {
  Config c = config;
  c.data.source = "synthetic";  // the simulated run reads no data
  c.data.path.clear();
  c.log.metrics.clear();
  c.checkpoint.dir.clear();
  const int k = cluster.gpus_per_node, world = nodes * k;
  c.runtime.ranks_per_node = k;
  const int p = static_cast<int>(c.mics.partition_size);
  const Topology topo = make_topology(rank, world, k, p, c.mics.hierarchical_allgather);
  const bool half = c.train.precision != "fp32";

  SimulatedStep out;
  out.mode = mode;
  out.nodes = nodes;
  out.gpus = world;
  out.partition_size = p;
  out.hierarchical = topo.hierarchical;
  Timeline timeline;
  auto backend = make_sim_backend(cluster, timeline);
  {
    QuietLog quiet;
    TrainerRuntime runtime;
    runtime.groups = build_sim_groups(topo, cluster, timeline);
    runtime.initialize_parameters = false;
    Trainer trainer(c, *backend, topo, std::move(runtime));
    // The first step records the acquire order that later steps prefetch by.
    trainer.train_step(0);
    const Timeline before = timeline;
    const CommStats bytes_before = trainer.comm_stats();
    trainer.train_step(1);
    out.time = timeline.minus(before);
    out.bytes = trainer.comm_stats().minus(bytes_before);
    out.global_batch = trainer.global_batch();
    out.accumulation = trainer.accumulation_steps();
  }
  out.step_s = out.time.compute_s;
  out.samples_per_s = static_cast<double>(out.global_batch) / out.step_s;
  out.tflops_per_gpu = model_flops_per_sample(c.model_spec(), c.train.seq_len) * out.samples_per_s / world / 1e12;
  out.mfu = out.tflops_per_gpu / (half ? cluster.peak_tflops_half : cluster.peak_tflops_fp32);
  out.memory_bytes = plan_memory(c, world, p, c.train.micro_batch_size, c.train.activation_checkpointing).total();
  out.fits = out.memory_bytes <= cluster.memory_gib * kGiB;
  return out;
}

std::vector<SimulatedStep> simulate_sweep(const Config& config, const ClusterSpec& cluster, const SweepRequest& request) {
  if (request.nodes.empty()) throw ConfigError("--nodes needs at least one node count.");
  const int k = cluster.gpus_per_node;
  const int64_t mb = config.train.micro_batch_size;
  const int smallest = *std::min_element(request.nodes.begin(), request.nodes.end());
  int64_t per_gpu = request.per_gpu_batch;
  if (per_gpu == 0) {
    per_gpu = config.train.global_batch_size > 0 ? config.train.global_batch_size / (static_cast<int64_t>(smallest) * k) : mb;
    per_gpu = std::max(mb, per_gpu / mb * mb);
  }
  if (per_gpu % mb != 0)
    throw ConfigError("--per-gpu-batch (" + std::to_string(per_gpu) + ") must be a multiple of 'train.micro_batch_size' (" +
                      std::to_string(mb) + ").");
  std::vector<SimulatedStep> rows;
  for (const std::string& mode : request.modes) {
    if (mode != "mics" && mode != "zero3" && mode != "dp")
      throw ConfigError("--modes: '" + mode + "' is not a mode; use mics, zero3 or dp.");
    for (int nodes : request.nodes) {
      if (nodes <= 0) throw ConfigError("--nodes: node counts must be positive.");
      Config c = config;
      const int world = nodes * k;
      c.train.global_batch_size = per_gpu * world;
      if (mode == "dp") {  // nothing gathered: a hierarchical gather has nothing to apply to
        c.mics.partition_size = 1;
        c.mics.hierarchical_allgather = "false";
      } else if (mode == "zero3") {  // ZeRO-3 as published: sharded over everyone, flat gathers
        c.mics.partition_size = world;
        c.mics.hierarchical_allgather = "false";
      } else {
        c.mics.partition_size = config.mics.partition_size > 0 ? std::min<int64_t>(config.mics.partition_size, world)
                                                               : auto_partition_size(c, world, k, cluster.memory_gib);
      }
      try {
        rows.push_back(simulate_step(c, cluster, nodes, mode));
      } catch (const ConfigError& e) {
        throw ConfigError("--nodes " + std::to_string(nodes) + " (" + std::to_string(world) + " GPUs), mode " + mode +
                          ": " + e.what());
      }
    }
  }
  // Weak-scaling efficiency: per-GPU throughput against the same mode's smallest run.
  std::map<std::string, double> base;
  for (const SimulatedStep& r : rows)
    if (r.nodes == smallest) base[r.mode] = r.samples_per_s / r.gpus;
  for (SimulatedStep& r : rows) r.scaling_efficiency = r.samples_per_s / r.gpus / base[r.mode];
  return rows;
}

std::string format_table(const Config& config, const ClusterSpec& cluster, const std::vector<SimulatedStep>& rows) {
  std::string out;
  char line[512];
  const SimulatedStep& first = rows.front();
  std::snprintf(line, sizeof line,
                "simulated: %s on %s (%d x %s per node), %s, %s attention, %lld samples per GPU per step (micro-batch "
                "%lld)\n"
                "comm columns: ms per step on the communication stream, by link tier that bounds them, by\n"
                "collective, and the part the compute stream waited for (exposed) or did not (hidden)\n\n",
                config.source_name.c_str(), cluster.name.c_str(), cluster.gpus_per_node, cluster.gpu_name.c_str(),
                config.train.precision.c_str(), config.runtime.attention.c_str(),
                static_cast<long long>(first.global_batch / first.gpus),
                static_cast<long long>(config.train.micro_batch_size));
  out += line;
  std::snprintf(line, sizeof line, "%5s %5s %-5s %4s %8s %9s %8s %5s %5s %7s %4s | %8s %8s %8s %8s %8s %8s %8s\n",
                "nodes", "GPUs", "mode", "p", "step s", "samples/s", "TFLOP/s", "MFU", "eff", "mem GiB", "fits",
                "intra", "inter", "gather", "rs", "allred", "exposed", "hidden");
  out += line;
  for (const SimulatedStep& r : rows) {
    const Timeline& t = r.time;
    const double comm = t.comm_total(), exposed = t.exposed_total();
    std::snprintf(line, sizeof line,
                  "%5d %5d %-5s %4d %8.3f %9.1f %8.1f %4.0f%% %4.0f%% %7.1f %4s | %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n",
                  r.nodes, r.gpus, r.mode.c_str(), r.partition_size, r.step_s, r.samples_per_s, r.tflops_per_gpu,
                  100 * r.mfu, 100 * r.scaling_efficiency, r.memory_bytes / kGiB, r.fits ? "yes" : "no",
                  1e3 * t.comm_total(-1, 0), 1e3 * t.comm_total(-1, 1), 1e3 * t.comm_total(0), 1e3 * t.comm_total(1),
                  1e3 * t.comm_total(2), 1e3 * exposed, 1e3 * std::max(0.0, comm - exposed));
    out += line;
  }
  return out;
}

namespace {
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled (a
// config path may hold any of them).
std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}
}  // namespace

void check_results_path(const std::string& path) {
  if (!ends_with(path, ".csv") && !ends_with(path, ".json"))
    throw ConfigError("--out '" + path + "' must end in .csv or .json.");
  std::error_code ec;  // (a path the system cannot look at fails the write test below)
  const std::filesystem::file_status target = std::filesystem::status(path, ec);
  if (std::filesystem::exists(target) && !std::filesystem::is_regular_file(target))
    throw ConfigError("--out " + path + " exists and is not a regular file; it is not replaced.");
  const bool existed = std::ifstream(path).good();
  if (!std::ofstream(path, std::ios::app)) throw ConfigError("--out: cannot write '" + path + "'.");
  if (!existed) std::remove(path.c_str());  // leave no empty file behind if the run fails
}

void write_results(const std::string& path, const Config& config, const ClusterSpec& cluster,
                   const std::vector<SimulatedStep>& rows) {
  check_results_path(path);
  const bool csv_out = ends_with(path, ".csv");
  const bool json_out = !csv_out;
  std::ostringstream f;
  nlohmann::json all = nlohmann::json::array();
  if (csv_out)
    f << "config,cluster,mode,nodes,gpus,partition_size,hierarchical,global_batch,accumulation,step_s,samples_per_s,"
         "tflops_per_gpu,mfu,scaling_efficiency,memory_gib,fits,gemm_s,elementwise_s,optimizer_s,comm_intra_s,"
         "comm_inter_s,gather_s,reduce_scatter_s,all_reduce_s,exposed_s,bytes_intra,bytes_inter\n";
  for (const SimulatedStep& r : rows) {
    const Timeline& t = r.time;
    const std::vector<std::pair<std::string, nlohmann::json>> fields = {
        {"config", config.source_name}, {"cluster", cluster.name}, {"mode", r.mode}, {"nodes", r.nodes},
        {"gpus", r.gpus}, {"partition_size", r.partition_size}, {"hierarchical", r.hierarchical},
        {"global_batch", r.global_batch}, {"accumulation", r.accumulation}, {"step_s", r.step_s},
        {"samples_per_s", r.samples_per_s}, {"tflops_per_gpu", r.tflops_per_gpu}, {"mfu", r.mfu},
        {"scaling_efficiency", r.scaling_efficiency}, {"memory_gib", r.memory_bytes / kGiB}, {"fits", r.fits},
        {"gemm_s", t.gemm_s}, {"elementwise_s", t.elementwise_s}, {"optimizer_s", t.optimizer_s},
        {"comm_intra_s", t.comm_total(-1, 0)}, {"comm_inter_s", t.comm_total(-1, 1)},
        {"gather_s", t.comm_total(0)}, {"reduce_scatter_s", t.comm_total(1)}, {"all_reduce_s", t.comm_total(2)},
        {"exposed_s", t.exposed_total()}, {"bytes_intra", r.bytes.bytes(LinkTier::intra_node)},
        {"bytes_inter", r.bytes.bytes(LinkTier::inter_node)}};
    nlohmann::json row;
    std::string csv;
    for (const auto& [key, value] : fields) {
      row[key] = value;
      if (!csv.empty()) csv += ',';
      csv += value.is_string() ? csv_field(value.get<std::string>()) : value.dump();
    }
    if (csv_out) f << csv << '\n';
    all.push_back(row);
  }
  if (json_out) f << all.dump(2) << '\n';
  try {
    write_file_replacing(path, [&](std::ostream& out) { out << f.str(); });
  } catch (const FileWriteError& e) {
    throw ConfigError(std::string("--out: ") + e.what());
  }
}

}  // namespace mics::sim
