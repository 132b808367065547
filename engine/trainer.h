#pragma once
// The training loop of one rank: micro-batches with gradient accumulation into the MiCS
// store, the two-hop gradient sync, global-norm clipping, AdamW on the shard with the
// weight-decay mask, the LR schedule, progress and metrics.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "data/batcher.h"
#include "engine/config.h"
#include "engine/process_groups.h"
#include "engine/sharded_param_store.h"
#include "engine/topology.h"
#include "engine/loss_scaler.h"
#include "engine/lr_schedule.h"
#include "engine/metrics.h"
#include "engine/optimizer.h"
#include "model/model.h"

namespace mics {

// A run that cannot go on, decided by every rank together (so none needs aborting).
struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What a Trainer runs on besides the backend. The defaults train for real over MPI; the
// simulator passes its own communicators and skips the parameter initialisation.
struct TrainerRuntime {
  std::unique_ptr<ProcessGroups> groups;  // null: this rank's MPI groups
  bool initialize_parameters = true;
  // Called after every completed step with the number of steps done (e.g. --profile's window).
  std::function<void(int64_t steps_done)> after_step;
  // Called around the writing of each checkpoint (--profile leaves its copies and time out).
  std::function<void()> before_checkpoint, after_checkpoint;
};

class Trainer {
 public:
  // Builds data, model and parameter store; throws ConfigError or data::DataError on bad input.
  Trainer(const Config& config, Backend& backend, const Topology& topology, TrainerRuntime runtime = {});
  ~Trainer();

  // Continues from a checkpoint (collective; see load_checkpoint).
  void resume(const std::string& where);
  // A requeued job (--resume auto) that found no checkpoint starts over from step 0: its
  // earlier attempt's metrics lines are superseded, as a resume's are after its step.
  void start_over();
  // Starts from Hugging Face weights: a .safetensors file or a folder holding model.safetensors.
  void init_from(const std::string& path);
  // Trains up to config.train.steps; returns the loss of every step it ran. Stops early,
  // after writing a checkpoint, when any rank received a stop signal (see preempted()).
  std::vector<double> run();
  bool preempted() const { return preempted_; }

  // One optimizer step over the global batch (collective); returns its mean loss.
  double train_step(int64_t step);

  int64_t accumulation_steps() const { return accumulation_; }
  int64_t global_batch() const { return global_batch_; }
  const CommStats& comm_stats() const { return groups_->stats; }
  const model::Model& model() const { return *model_; }
  const ShardedParamStore& store() const { return *store_; }

 private:

  const Config& config_;
  Backend& backend_;
  Topology topo_;
  std::unique_ptr<ProcessGroups> groups_;
  std::function<void(int64_t)> after_step_;
  std::function<void()> before_checkpoint_, after_checkpoint_;
  int64_t global_batch_ = 0, accumulation_ = 0;
  std::unique_ptr<data::TokenSource> source_;
  std::unique_ptr<data::Batcher> batcher_;
  std::vector<data::Batch> batches_;  // this rank's micro-batches of the step
  std::vector<double> labelled_;      // their labelled positions (model.h: labels >= 0)
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<ShardedParamStore> store_;
  std::unique_ptr<AdamW> optimizer_;
  LrSchedule schedule_;
  std::unique_ptr<MetricsFile> metrics_;
  int64_t start_step_ = 0;    // first step this run trains
  int64_t sample_base_ = 0;   // global samples consumed before start_step_
  bool preempted_ = false;
  int64_t consecutive_skips_ = 0, skipped_steps_ = 0;
  double last_grad_norm_ = 0;
  double optimizer_wait_s_ = 0;  // the forwards' waits for the overlapped update, since the last report
  LossScaler scaler_;  // fp16 only
  double last_loss_scale_ = 1;
  bool last_skipped_ = false;
};

}  // namespace mics
