#include "engine/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "data/content_hash.h"
#include "engine/checkpoint.h"
#include "engine/comm/rank_agreement.h"
#include "engine/flops.h"
#include "engine/hf_interchange.h"
#include "engine/stop_signal.h"
#include "kernels/counter_hash.h"

namespace mics {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

Trainer::Trainer(const Config& c, Backend& backend, const Topology& topo, TrainerRuntime runtime)
    : config_(c), backend_(backend), topo_(topo) {
  const TrainConfig& t = c.train;
  accumulation_ = c.checked_accumulation_steps(topo.world);
  global_batch_ = accumulation_ * t.micro_batch_size * topo.world;
  groups_ = runtime.groups ? std::move(runtime.groups) : build_mpi_groups(topo);

  // "{rank}" in the metrics path gives every rank its own file; otherwise rank 0 writes.
  // Opened first, before minutes of set-up, and agreed on: a file one rank cannot open
  // ends every rank the same way.
  std::string metrics_path = c.log.metrics;
  const size_t tag = metrics_path.find("{rank}");
  if (tag != std::string::npos) metrics_path.replace(tag, 6, std::to_string(topo.rank));
  agree_on_failure<ConfigError>(
      *groups_->world, "'log.metrics' (--metrics): another rank cannot open its metrics file; see its message.", [&] {
        try {
          if (!metrics_path.empty() && (topo.rank == 0 || tag != std::string::npos))
            metrics_ = std::make_unique<MetricsFile>(metrics_path);
        } catch (const std::exception& e) {
          throw ConfigError("'log.metrics' (--metrics): " + std::string(e.what()));
        }
      });

  const bool bert = c.model.type == "bert";
  const data::Objective objective = bert ? data::Objective::masked_lm : data::Objective::causal_lm;
  data::SourceOptions so;
  so.kind = c.data.source;
  so.path = c.data.path;
  so.window_len = data::Batcher::window_len(objective, static_cast<int>(t.seq_len));
  so.vocab_size = static_cast<int32_t>(c.model.vocab_size);
  // BERT keeps its [MASK] id out of the synthetic token range.
  so.synthetic_vocab = static_cast<int32_t>(bert ? c.data.mask_token_id : c.model.vocab_size);
  so.seed = static_cast<uint64_t>(t.seed);
  so.shuffle = c.data.shuffle;
  // Every rank reads the data itself: one may fail alone (a path its node lacks) or read
  // other files (a node with another copy), which would train on a mix of both.
  agree_on_failure<data::DataError>(*groups_->world, "another rank cannot read the data; see its message.",
                                    [&] { source_ = data::make_token_source(so); });
  const std::string identity = source_->identity();
  if (const Difference d = difference_from_rank0(*groups_->world, data::ContentHash::of(identity)); d.ranks > 0)
    throw data::DataError(d.here ? "the data this rank reads differ from rank 0's (is 'data.path' the same on every node?); "
                                   "here: " + identity + "."
                                 : std::to_string(d.ranks) + " rank(s) read data that differ from rank 0's; see their "
                                   "messages.");
  if (source_->vocab_bound() > c.model.vocab_size)
    throw ConfigError("the data in '" + (c.data.path.empty() ? c.data.source : c.data.path) +
                      "' holds token ids up to " + std::to_string(source_->vocab_bound() - 1) +
                      ", beyond 'model.vocab_size' (" + std::to_string(c.model.vocab_size) + ").");

  data::BatcherOptions bo;
  bo.objective = objective;
  bo.micro_batch = static_cast<int>(t.micro_batch_size);
  bo.seq_len = static_cast<int>(t.seq_len);
  bo.mask_prob = c.data.mask_prob;
  bo.mask_token = static_cast<int32_t>(bert ? c.data.mask_token_id : 0);
  bo.random_token_bound = source_->vocab_bound();
  bo.seed = static_cast<uint64_t>(t.seed);
  batcher_ = std::make_unique<data::Batcher>(*source_, bo);
  batches_.resize(static_cast<size_t>(accumulation_));
  labelled_.resize(static_cast<size_t>(accumulation_));

  const int64_t multiple = model::shard_multiple_for(topo.partition_size);
  const DType compute = compute_dtype(t.precision);
  model_ = model::make_model(c.model_spec(), backend, compute, t.micro_batch_size, t.seq_len, multiple);
  const model::ParamLayout& layout = model_->layout();
  store_ = std::make_unique<ShardedParamStore>(
      backend, layout, topo, groups_->groups(),
      StoreOptions{static_cast<int>(c.mics.prefetch), c.mics.gradient_sync == "every_microstep", compute,
                   c.mics.replication_dtype == "compute" ? compute : DType::f32, accumulation_});
  if (runtime.initialize_parameters) store_->initialize(static_cast<uint64_t>(t.seed));
  after_step_ = std::move(runtime.after_step);
  before_checkpoint_ = std::move(runtime.before_checkpoint);
  after_checkpoint_ = std::move(runtime.after_checkpoint);
  if (t.precision == "fp16") {
    LossScaler::Options scaling;
    if (t.initial_loss_scale > 0) scaling.initial = t.initial_loss_scale;
    scaler_ = LossScaler(scaling);
  } else if (t.initial_loss_scale > 0) {
    spdlog::warn("'train.initial_loss_scale' is ignored: train.precision is {}, and only fp16 scales the loss",
                 t.precision);
  }
  optimizer_ = std::make_unique<AdamW>(layout, store_->ranges());
  schedule_ = LrSchedule{t.lr, t.min_lr, t.warmup_steps, t.steps, t.lr_decay};
  spdlog::info("data: {}", source_->describe());
  if (topo.rank == 0 && source_->num_windows() > 0 && source_->num_windows() < global_batch_)
    spdlog::warn("the data hold {} window(s), fewer than one global batch ({} samples): every step trains on some "
                 "of them more than once", source_->num_windows(), global_batch_);
  spdlog::info("model: {} with {} parameters ({:.2f} M) in {} layer spans; activations {:.1f} MiB",
               c.model.type, layout.parameter_count(),
               static_cast<double>(layout.parameter_count()) / 1e6, layout.num_layers(),
               static_cast<double>(model_->activation_bytes()) / (1024.0 * 1024.0));
  spdlog::info("batch: global {} = micro-batch {} x {} accumulation steps x {} ranks, seq {}",
               global_batch_, t.micro_batch_size, accumulation_, topo.world, t.seq_len);
  spdlog::info("model states on this rank: {} of {} elements, {:.2f} MiB; with working buffers {:.2f} MiB; {}",
               store_->shard_elements(), layout.total_elements(),
               static_cast<double>(store_->model_state_bytes()) / (1024.0 * 1024.0),
               static_cast<double>(store_->resident_bytes()) / (1024.0 * 1024.0),
               store_->grads_in_place() ? "gradients used in place (" + std::string(dtype_name(store_->grads().dtype)) +
                                              ", one rank)"
                                        : std::string("gradients accumulated in fp32"));
  if (c.runtime.overlap_optimizer)
    spdlog::info("optimizer: each layer's update deferred to its first use in the next step, {}{}",
                 backend.has_side_queue() ? "queued on the backend's side queue to overlap the forward"
                                          : "run there (no side queue to overlap on: the CPU backend, or --profile)",
                 backend.has_side_queue() && c.runtime.overlap_optimizer_sms > 0
                     ? " on at most " + std::to_string(c.runtime.overlap_optimizer_sms) + " SMs" +
                           (c.runtime.overlap_optimizer_chunked ? ", in chunks" : ", each layer's in one launch")
                     : std::string());
}

Trainer::~Trainer() = default;

double Trainer::train_step(int64_t step) {
  const TrainConfig& t = config_.train;
  store_->begin_step(accumulation_);
  // This rank's micro-batches, filled first: the step's loss is the mean over every
  // labelled position of the global batch, so each micro-batch's weight needs the global
  // count. Sample indices depend on the global position only: any N and p see the same batch.
  // A window that cannot be read (a shard truncated during the run) fails on this rank
  // alone: its NaN in the sum below tells every rank, and they stop together (exit 2).
  double labelled = 0;
  std::string unreadable;
  for (int64_t j = 0; j < accumulation_; ++j) {
    const int64_t first = sample_base_ + (step - start_step_) * global_batch_ +
                          (j * topo_.world + topo_.rank) * t.micro_batch_size;
    data::Batch& batch = batches_[static_cast<size_t>(j)];
    try {
      batcher_->fill(first, batch);
    } catch (const data::DataError& e) {
      unreadable = e.what();
      labelled = std::numeric_limits<double>::quiet_NaN();
      break;
    }
    double& n = labelled_[static_cast<size_t>(j)];
    n = static_cast<double>(std::count_if(batch.labels.begin(), batch.labels.end(),
                                          [](int32_t label) { return label >= 0; }));  // model.h: labels < 0 carry no loss
    labelled += n;
  }
  const double global_labelled = groups_->world->sum_scalar(labelled);
  if (std::isnan(global_labelled))
    throw data::DataError(unreadable.empty() ? "another rank cannot read its samples of step " + std::to_string(step + 1) +
                                                   "; see its message."
                                             : unreadable);
  // A micro-batch's mean loss (what the model returns, and whose gradient it forms) counts
  // n / N of the step's: n its labelled positions, N the global batch's. BERT masks a
  // different number of positions in each micro-batch, so any other weighting would make
  // its loss depend on the split into ranks and micro-steps; GPT's are all equal, and N / n
  // is exactly the number of micro-batches in the global batch. fp16 multiplies the
  // gradient by the loss scale, which the optimizer divides out again.
  const double loss_scale = scaler_.scale();
  double loss_sum = 0;
  for (int64_t j = 0; j < accumulation_; ++j) {
    const data::Batch& batch = batches_[static_cast<size_t>(j)];
    const double n = labelled_[static_cast<size_t>(j)];
    const double share = n > 0 ? global_labelled / n : 1.0;
    const model::TokenBatch tb{batch.tokens.data(), batch.labels.data(), t.micro_batch_size, t.seq_len};
    loss_sum += model_->forward(*store_, tb, mix_seed(static_cast<uint64_t>(t.seed), static_cast<uint64_t>(batch.first_sample)),
                                loss_scale / share) / share;
    model_->backward(*store_);
    store_->end_micro_step();
  }
  store_->end_accumulation();
  loss_sum = groups_->world->sum_scalar(loss_sum);

  const double norm = std::sqrt(store_->grad_norm_squared()) / loss_scale;
  last_grad_norm_ = norm;
  // The norm was read back, so the main queue has passed this step's fence waits.
  optimizer_wait_s_ += backend_.take_fence_wait_s();
  // The norm and the loss are global, so every rank takes the same decision.
  last_skipped_ = !std::isfinite(norm) || !std::isfinite(loss_sum);
  last_loss_scale_ = scaler_.update(!std::isfinite(norm));
  if (last_skipped_ && scaler_.enabled() && std::isfinite(loss_sum) && !scaler_.at_minimum()) {
    // An fp16 overflow: expected now and then, answered by a smaller scale.
    ++skipped_steps_;
    spdlog::warn("step {}: fp16 gradients overflowed at loss scale {}; the update is skipped and the scale is now {}",
                 step + 1, last_loss_scale_, scaler_.scale());
  } else if (last_skipped_) {
    ++consecutive_skips_;
    ++skipped_steps_;
    std::string where;
    for (int l : store_->nonfinite_grad_layers())
      where += (where.empty() ? "" : ", ") + model_->layout().layers()[static_cast<size_t>(l)].name;
    spdlog::warn("step {}: loss {}, gradient norm {}; non-finite gradients in {}; the update is skipped ({} in a row)",
                 step + 1, loss_sum, norm, where.empty() ? "no layer (the loss only)" : where, consecutive_skips_);
    if (consecutive_skips_ >= t.max_skipped_steps)
      throw TrainingError(std::to_string(consecutive_skips_) +
                          " consecutive steps had non-finite gradients ('train.max_skipped_steps' is " +
                          std::to_string(t.max_skipped_steps) + "), last in " + (where.empty() ? "the loss" : where) +
                          "; stopping with the last checkpoint intact (lower train.lr or raise train.grad_clip).");
  } else {
    consecutive_skips_ = 0;
    AdamWSpec spec;
    spec.lr = static_cast<float>(schedule_.at(step));
    spec.beta1 = static_cast<float>(t.adam_beta1);
    spec.beta2 = static_cast<float>(t.adam_beta2);
    spec.eps = static_cast<float>(t.adam_eps);
    spec.weight_decay = static_cast<float>(t.weight_decay);
    spec.step = step + 1;
    const double clip = t.grad_clip > 0 && norm > t.grad_clip ? t.grad_clip / (norm + 1e-6) : 1.0;
    spec.grad_scale = static_cast<float>(clip / loss_scale);
    // The optimizer writes the working copy (if the store keeps one) as it updates the master.
    if (config_.runtime.overlap_optimizer) {
      store_->defer_update([this, spec, master = store_->master(), grads = store_->grads(), m = store_->adam_m(),
                            v = store_->adam_v(), copy = store_->working_copy()](int layer) {
        optimizer_->step_run(backend_, static_cast<size_t>(layer), master, grads, m, v, spec, copy);
      });
    } else {
      optimizer_->step(backend_, store_->master(), store_->grads(), store_->adam_m(), store_->adam_v(), spec,
                       store_->working_copy());
    }
  }
  return loss_sum;
}

void Trainer::resume(const std::string& where) {
  store_->settle_updates();  // nothing deferred may land on the loaded weights
  const ResumePoint point = load_checkpoint(where, config_, topo_, model_->layout(), *store_);
  store_->master_changed();
  start_step_ = point.step;
  sample_base_ = point.samples_seen;
  scaler_.restore(point.loss_scaler);
  if (scaler_.enabled())
    spdlog::info("fp16 loss scale {} ({} good steps towards the next doubling){}", scaler_.scale(),
                 scaler_.state().good_steps, point.loss_scaler.scale > 0 ? ", from the checkpoint" : ", initial");
  spdlog::info("resumed from {} at step {} ({} samples seen)", point.path, point.step, point.samples_seen);
  if (topo_.rank == 0 && !point.data.empty() && point.data != source_->identity())
    spdlog::warn("the data differ from the checkpoint's run (then \"{}\", now \"{}\"): its {} samples seen are "
                 "positions in another order, so some windows come again and others are skipped",
                 point.data, source_->identity(), point.samples_seen);
  if (start_step_ >= config_.train.steps)
    spdlog::warn("the checkpoint is at step {} and train.steps is {}: nothing left to train", start_step_,
                 config_.train.steps);
  if (metrics_) metrics_->drop_steps_after(start_step_);
}

void Trainer::start_over() {
  if (metrics_) metrics_->drop_steps_after(0);
}

void Trainer::init_from(const std::string& where) {
  namespace fs = std::filesystem;
  std::error_code ec;  // an unreadable path is read_safetensors' or check_hf_config's to name
  std::string path = where;
  fs::path folder = fs::path(where).parent_path();
  const bool given_folder = fs::is_directory(where, ec);
  if (given_folder) {
    folder = where;
    path = (folder / "model.safetensors").string();
  }
  const model::ModelSpec spec = config_.model_spec();
  const model::ParamLayout& layout = model_->layout();
  // Every rank reads the file; one whose node lacks it stops the others with it.
  std::map<std::string, std::vector<float>> ours;
  agree_on_failure<SafetensorsError>(*groups_->world, "another rank cannot initialise from " + path + "; see its message.", [&] {
    // The weights' shapes do not show heads, activation, LayerNorm eps or attention scaling;
    // the config.json beside them (in the folder, or the file's folder) does.
    if (const fs::path hf = folder / "config.json"; fs::exists(fs::symlink_status(hf, ec)))
      for (const std::string& warning : check_hf_config(spec, hf.string(), !given_folder))
        if (topo_.rank == 0) spdlog::warn("{}", warning);
    ours = from_hf(spec, layout, read_safetensors(path, hf_ignored_names(spec)), path);
  });
  std::vector<float> shard(static_cast<size_t>(store_->shard_elements()), 0.0f);
  for (const model::ParamTensor& t : layout.tensors()) {
    const std::vector<float>& values = ours.at(t.name);
    for (const model::FlatRange& run : store_->ranges()) {
      const int64_t lo = std::max(run.flat_begin, t.offset), hi = std::min(run.flat_begin + run.size, t.offset + t.numel());
      if (lo < hi)
        std::copy(values.begin() + (lo - t.offset), values.begin() + (hi - t.offset),
                  shard.begin() + run.local_offset + (lo - run.flat_begin));
    }
  }
  store_->settle_updates();
  backend_.copy_from_host(store_->master().data, shard.data(), shard.size() * sizeof(float));
  store_->master_changed();
  spdlog::info("initialised {} parameters from {}", layout.parameter_count(), path);
}

std::vector<double> Trainer::run() {
  const TrainConfig& t = config_.train;
  const double flops_per_sample = model_flops_per_sample(config_.model_spec(), t.seq_len);
  std::vector<double> losses;
  const Clock::time_point start = Clock::now();
  Clock::time_point window_start = start;
  CommStats window_comm = groups_->stats;
  int64_t window_steps = 0;
  // One progress line (and metrics row) for the steps since the previous one.
  auto report = [&](int64_t step) {
    StepMetrics m;
    m.step = step + 1;
    m.total_steps = t.steps;
    m.loss = losses.back();
    m.lr = schedule_.at(step);
    m.grad_norm = last_grad_norm_;
    m.skipped = last_skipped_;
    m.skipped_steps = skipped_steps_;
    m.loss_scale = last_loss_scale_;
    m.optimizer_wait_measured = config_.runtime.overlap_optimizer && backend_.has_side_queue();
    m.optimizer_wait_s = optimizer_wait_s_ / static_cast<double>(window_steps);
    optimizer_wait_s_ = 0;
    m.step_time_s = seconds_since(window_start) / static_cast<double>(window_steps);
    m.samples_per_s = static_cast<double>(global_batch_) / m.step_time_s;
    m.tokens_per_s = m.samples_per_s * static_cast<double>(t.seq_len);
    m.tflops_per_device = flops_per_sample * m.samples_per_s / topo_.world / 1e12;
    m.comm = groups_->stats.minus(window_comm).scaled(1.0 / static_cast<double>(window_steps));
    m.model_state_bytes = static_cast<double>(store_->model_state_bytes());
    m.elapsed_s = seconds_since(start);
    m.eta_s = m.elapsed_s / static_cast<double>(m.step - start_step_) * static_cast<double>(t.steps - m.step);
    if (topo_.rank == 0) spdlog::info("{}", m.progress_line());
    if (metrics_) metrics_->write(m);
    window_comm = groups_->stats;
    window_start = Clock::now();
    window_steps = 0;
  };

  const bool checkpoints = !config_.checkpoint.dir.empty();
  for (int64_t step = start_step_; step < t.steps; ++step) {
    losses.push_back(train_step(step));
    ++window_steps;
    const int64_t done = step + 1;
    if (after_step_) after_step_(done);
    // Every rank learns whether any rank was signalled, so all stop at the same step.
    preempted_ = !world_all(!stop_signal_received()) && done < t.steps;
    if (preempted_ || step == start_step_ || done % config_.log.every == 0 || done == t.steps) report(step);
    if (preempted_)
      spdlog::warn("stop requested{}{}: {} step {} and exiting", stop_signal_received() ? " by " : "",
                   stop_signal_name(), checkpoints ? "checkpointing" : "stopping at", done);
    bool scheduled = (config_.checkpoint.every > 0 && done % config_.checkpoint.every == 0) || done == t.steps;
    if (checkpoints && scheduled && last_skipped_ && !preempted_) {
      // A skipped step changed nothing worth keeping, and writing it could prune a good one.
      spdlog::warn("checkpoint of step {} not written: its update was skipped", done);
      scheduled = false;
    }
    if (checkpoints && (scheduled || preempted_)) {
      store_->settle_updates();  // the deferred updates of this step, all in the shards
      if (before_checkpoint_) before_checkpoint_();
      save_checkpoint(config_, topo_, model_->layout(), *store_, done,
                      sample_base_ + (done - start_step_) * global_batch_, source_->identity(), scaler_.state());
      if (after_checkpoint_) after_checkpoint_();
      backend_.take_fence_wait_s();  // the settle's waits (read back by the save): not a forward's
    }
    if (preempted_) {
      if (!checkpoints) spdlog::warn("no checkpoint.dir is set: the progress of this run is lost");
      break;
    }
  }
  store_->settle_updates();
  return losses;
}

}  // namespace mics
