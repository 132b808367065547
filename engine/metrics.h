#pragma once
// Progress of training: one readable line for the log and one JSON object per logged step
// for --metrics files.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/comm/communicator.h"

namespace mics {

struct StepMetrics {
  int64_t step = 0;         // 1-based optimizer step just finished
  int64_t total_steps = 0;
  double loss = 0;          // mean over the global batch's micro-batches
  double lr = 0;
  double grad_norm = 0;     // before clipping
  double step_time_s = 0;   // mean over the steps since the previous report
  double samples_per_s = 0;
  double tokens_per_s = 0;
  double tflops_per_device = 0;  // model FLOPs
  double elapsed_s = 0;
  double eta_s = 0;
  bool skipped = false;     // non-finite gradients: the update was not applied
  int64_t skipped_steps = 0;  // skipped updates since the run started (fp16 overflows included)
  double loss_scale = 1;      // fp16: the dynamic loss scale the step used; 1 otherwise
  // runtime.overlap_optimizer on a side queue: seconds a step's forward stood waiting for
  // the overlapped update (mean over the steps since the last report); shown when measured.
  double optimizer_wait_s = 0;
  bool optimizer_wait_measured = false;
  // This rank's communication per step, averaged over the steps since the last report.
  CommStats comm;
  double model_state_bytes = 0;  // this rank's shards of weights, gradients, Adam states

  nlohmann::json to_json() const;
  std::string progress_line() const;
};

// Appends JSON lines to a file; opening it is checked at start so a bad path fails fast.
// Metrics are not the run: a write that fails (a full disk) is taken back to the last whole
// line, warned about once, and ends the file's writing, not the training.
class MetricsFile {
 public:
  explicit MetricsFile(const std::string& path);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  void write(const StepMetrics& m);
  // A resumed run trains the steps after its checkpoint again: their lines from the run
  // that went past the checkpoint are taken out (as TensorBoard's purge_step does), so the
  // file keeps one line per step. Lines that are not a metrics object are kept. Returns
  // how many lines were dropped; a file that cannot be rewritten is warned about and kept.
  int64_t drop_steps_after(int64_t step);

 private:
  std::string path_;
  int fd_ = -1;  // -1 once a write failed
};

std::string format_duration(double seconds);  // "42s", "3m05s", "2h10m"
std::string format_bytes(double bytes);        // "20.06 GiB"

}  // namespace mics
