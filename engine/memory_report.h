#pragma once
// Model-state memory per device, from the layout alone (nothing is allocated), for
// --dry-run and for choosing the partition size.
#include <cstdint>
#include <string>

#include "engine/config.h"
#include "model/param_layout.h"

namespace mics {

struct ModelStateBytes {
  int64_t partition_size = 1;
  double working_params = 0;  // half-precision copy of the shard (mixed precision only)
  double grads = 0;           // gradient shard in the compute dtype
  double master = 0;          // fp32 master weights
  double adam = 0;            // fp32 m and v
  double gathered = 0;        // largest layer gathered, times (1 + prefetch), compute dtype
  double total() const { return working_params + grads + master + adam + gathered; }
};

ModelStateBytes model_state_bytes(const model::ParamLayout& layout, const std::string& precision,
                                  int64_t partition_size, int64_t prefetch);

// Smallest multiple of ranks_per_node whose model states fit device_memory_gb (GiB).
int64_t auto_partition_size(const Config& config, int64_t ranks_per_node);

// The --dry-run report: parameter count, layout and model-state bytes per device.
std::string dry_run_report(const Config& config, int64_t ranks_per_node);

}  // namespace mics
