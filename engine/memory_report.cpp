#include "engine/memory_report.h"

#include <algorithm>
#include <cstdio>

#include "engine/metrics.h"
#include "model/model.h"

namespace mics {

namespace {
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kMaxPartition = 1 << 16;

int64_t largest_layer(const model::ParamLayout& layout) {
  int64_t best = 0;
  for (const model::LayerSpan& s : layout.layers()) best = std::max(best, s.size);
  return best;
}
}  // namespace

ModelStateBytes model_state_bytes(const model::ParamLayout& layout, const std::string& precision,
                                  int64_t p, int64_t prefetch) {
  const double shard = static_cast<double>(layout.total_elements()) / static_cast<double>(p);
  const bool mixed = precision != "fp32";
  const double compute_bytes = mixed ? 2.0 : 4.0;
  ModelStateBytes b;
  b.partition_size = p;
  b.working_params = mixed ? 2.0 * shard : 0.0;  // fp32 computes on the master directly
  b.grads = compute_bytes * shard;
  b.master = 4.0 * shard;
  b.adam = 8.0 * shard;
  // With p = 1 nothing is gathered: the working copy is the whole model already.
  b.gathered = p > 1 ? compute_bytes * static_cast<double>(largest_layer(layout)) *
                           static_cast<double>(1 + prefetch)
                     : 0.0;
  return b;
}

int64_t auto_partition_size(const Config& config, int64_t ranks_per_node) {
  const int64_t k = std::max<int64_t>(ranks_per_node, 1);
  const double budget = config.runtime.device_memory_gb * kGiB;
  for (int64_t p = k; p <= kMaxPartition; p += k) {
    const model::ParamLayout layout =
        model::build_layout(config.model_spec(), model::shard_multiple_for(p));
    if (model_state_bytes(layout, config.train.precision, p, config.mics.prefetch).total() <= budget)
      return p;
  }
  throw ConfigError("'mics.partition_size' \"auto\": the model states do not fit " +
                    std::to_string(config.runtime.device_memory_gb) +
                    " GiB per device ('runtime.device_memory_gb') at any partition size up to " +
                    std::to_string(kMaxPartition) + ".");
}

std::string dry_run_report(const Config& config, int64_t ranks_per_node) {
  const model::ModelSpec spec = config.model_spec();
  const int64_t p = config.mics.partition_size > 0 ? config.mics.partition_size
                                                   : auto_partition_size(config, ranks_per_node);
  const model::ParamLayout layout = model::build_layout(spec, model::shard_multiple_for(p));
  const ModelStateBytes b = model_state_bytes(layout, config.train.precision, p, config.mics.prefetch);
  const bool mixed = config.train.precision != "fp32";
  const char* half = config.train.precision.c_str();

  std::string out;
  char line[256];
  auto add = [&](const std::string& label, const std::string& value) {
    char row[320];
    std::snprintf(row, sizeof row, "  %-34s %s\n", label.c_str(), value.c_str());
    out += row;
  };
  char billions[32];
  std::snprintf(billions, sizeof billions, "%.3f", static_cast<double>(layout.parameter_count()) / 1e9);
  out += "dry run: " + config.source_name + " (nothing allocated)\n";
  add("model", config.model.type + ", " + std::to_string(spec.layers) + " layers, hidden " +
                   std::to_string(spec.hidden) + ", heads " + std::to_string(spec.heads) +
                   ", ffn " + std::to_string(spec.ffn) + ", vocab " + std::to_string(spec.vocab));
  add("parameters", std::to_string(layout.parameter_count()) + " (" + billions + "B)");
  add("flat buffer (aligned, padded)", std::to_string(layout.total_elements()) + " elements in " +
                                           std::to_string(layout.num_layers()) + " layer spans");
  add("partition size p", std::to_string(p) + (config.mics.partition_size == 0 ? " (auto)" : ""));
  add("precision", mixed ? config.train.precision + " compute, fp32 master weights and Adam states"
                         : std::string("fp32"));
  out += "model-state bytes per device (1/p of each):\n";
  if (mixed) add(std::string(half) + " parameters", format_bytes(b.working_params));
  add(std::string(mixed ? half : "fp32") + " gradients", format_bytes(b.grads));
  add(mixed ? "fp32 master weights" : "fp32 parameters", format_bytes(b.master));
  add("fp32 Adam m and v", format_bytes(b.adam));
  add("model states (16 bytes/param / p)",
      format_bytes(b.working_params + b.grads + b.master + b.adam));
  if (p > 1) {
    std::snprintf(line, sizeof line, "gathered layers (%lld in flight)",
                  static_cast<long long>(1 + config.mics.prefetch));
    add(line, format_bytes(b.gathered));
  }
  add("total before activations", format_bytes(b.total()));
  std::snprintf(line, sizeof line, "%.1f GiB per device", config.runtime.device_memory_gb);
  add("runtime.device_memory_gb", std::string(line) +
                                      (b.total() <= config.runtime.device_memory_gb * kGiB
                                           ? " (fits)"
                                           : " (does NOT fit: raise mics.partition_size)"));
  return out;
}

}  // namespace mics
