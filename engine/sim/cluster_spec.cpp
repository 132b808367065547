#include "engine/sim/cluster_spec.h"

#include <cmath>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/config.h"

namespace mics::sim {

namespace {

using nlohmann::json;

// Walks one JSON object, remembering which keys were read so the rest can be refused.
class Reader {
 public:
  Reader(const json& node, std::string file, std::string prefix)
      : node_(node), file_(std::move(file)), prefix_(std::move(prefix)) {
    if (!node_.is_object()) fail(prefix_.empty() ? "the top level" : "'" + prefix_ + "'", "must be an object");
  }

  const json& child(const std::string& key) {
    seen_.insert(key);
    const auto it = node_.find(key);
    if (it == node_.end()) fail(where(key), "is missing");
    return *it;
  }
  std::string text(const std::string& key) {
    const json& v = child(key);
    if (!v.is_string() || v.get<std::string>().empty()) fail(where(key), "must be a non-empty string");
    return v.get<std::string>();
  }
  // {"value": number > 0 (or >= 0 when zero_ok), "source": "where it comes from"}
  double quantity(const std::string& key, bool zero_ok = false) {
    Reader q(child(key), file_, where_path(key));
    const json& v = q.child("value");
    if (!v.is_number()) q.fail(q.where("value"), "must be a number");
    const double value = v.get<double>();
    if (value < 0 || (!zero_ok && value == 0)) q.fail(q.where("value"), zero_ok ? "must be >= 0" : "must be > 0");
    q.text("source");
    q.finish();
    return value;
  }
  Reader section(const std::string& key) { return Reader(child(key), file_, where_path(key)); }
  void finish() const {
    for (auto it = node_.begin(); it != node_.end(); ++it)
      if (!seen_.count(it.key()))
        fail(where(it.key()), "is not a cluster-file key (see configs/clusters/README.md)");
  }
  [[noreturn]] void fail(const std::string& what, const std::string& problem) const {
    throw ConfigError(file_ + ": " + what + " " + problem + ".");
  }
  std::string where(const std::string& key) const {
    // Appended rather than "'" + path + "'": GCC 12 warns falsely (-Wrestrict) on that form.
    std::string quoted = "'";
    quoted += where_path(key);
    quoted += "'";
    return quoted;
  }

 private:
  std::string where_path(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

  const json& node_;
  std::string file_, prefix_;
  std::set<std::string> seen_;
};

}  // namespace

double ClusterSpec::gemm_flops_per_s(bool half) const {
  return (half ? peak_tflops_half : peak_tflops_fp32) * 1e12 * gemm_efficiency;
}

ClusterSpec load_cluster(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("cannot open cluster file '" + path + "'.");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::parse_error& e) {
    throw ConfigError("cluster file '" + path + "' is not valid JSON: " + e.what());
  }
  ClusterSpec c;
  Reader top(doc, path, "");
  c.name = top.text("name");
  top.text("description");
  c.gpus_per_node = static_cast<int>(top.quantity("gpus_per_node"));
  Reader gpu = top.section("gpu");
  c.gpu_name = gpu.text("name");
  // Optional: what the GPU can run (bf16, cuDNN's fused attention) for "auto" settings.
  if (doc.is_object() && doc.contains("gpu") && doc["gpu"].is_object() && doc["gpu"].contains("compute_capability"))
    c.compute_capability = static_cast<int>(std::lround(gpu.quantity("compute_capability") * 10));
  c.memory_gib = gpu.quantity("memory_gib");
  c.peak_tflops_half = gpu.quantity("peak_tflops_half");
  c.peak_tflops_fp32 = gpu.quantity("peak_tflops_fp32");
  c.gemm_efficiency = gpu.quantity("gemm_efficiency");
  c.memory_gbs = gpu.quantity("memory_gbs");
  c.memory_efficiency = gpu.quantity("memory_efficiency");
  gpu.finish();
  Reader intra = top.section("intra_node");
  c.intra_gbs = intra.quantity("bandwidth_gbs");
  c.intra_latency_us = intra.quantity("latency_us", true);
  intra.finish();
  Reader inter = top.section("inter_node");
  c.inter_gbits = inter.quantity("bandwidth_gbits");
  c.inter_latency_us = inter.quantity("latency_us", true);
  inter.finish();
  if (doc.is_object() && doc.contains("collective_efficiency")) {
    Reader eff = top.section("collective_efficiency");
    c.collective_efficiency[0] = eff.quantity("all_gather");
    c.collective_efficiency[1] = eff.quantity("reduce_scatter");
    c.collective_efficiency[2] = eff.quantity("all_reduce");
    eff.finish();
  }
  top.finish();
  if (c.gemm_efficiency > 1 || c.memory_efficiency > 1)
    throw ConfigError(path + ": 'gpu.gemm_efficiency' and 'gpu.memory_efficiency' are fractions of the peak (at most 1).");
  return c;
}

}  // namespace mics::sim
