#pragma once
// MiCS's model states. Each rank owns 1/p of every layer span of the flat buffer: fp32
// master weights, AdamW's m and v, and the gradient accumulator; nothing is replicated
// inside a partition group. The model's "layer i" is gathered into a working buffer
// (flat or hierarchical all-gather, the next layers prefetched while this one computes),
// and its gradients are reduce-scattered into the accumulator shard right after its
// backward. The replication group all-reduces the accumulated shard once per optimizer
// step (two-hop: layer by layer as each lands in the last micro-step, so the all-reduce
// overlaps the rest of that backward) or after every micro-step. With p = 1 and no replicas
// the model's gradients are used where it wrote them (gradients_in_place()).
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "engine/comm/communicator.h"
#include "engine/deferred_updates.h"
#include "engine/topology.h"
#include "kernels/ops.h"
#include "model/param_layout.h"
#include "model/param_provider.h"

namespace mics {

struct StoreOptions {
  int prefetch = 1;              // layers gathered ahead of the one being acquired
  bool sync_every_microstep = false;
  // The model's compute dtype: gathered parameters and the layer gradients it writes (and
  // their reduce-scatter) are in it; master weights, Adam states and the accumulated
  // gradient shard stay fp32.
  DType work_dtype = DType::f32;
  // Two-hop: the dtype of the all-reduce across replicas (f32, or work_dtype to halve it).
  DType replication_dtype = DType::f32;
  // Micro-steps per optimizer step (the trainer's accumulation steps).
  int64_t accumulation_steps = 1;
};

// Whether a rank's gradients can be the model's own, written in place in the work dtype
// and read so by the optimizer (ShardedParamStore::grads()): with p = 1 and no replicas
// there is nothing to reduce, and unless a half-precision model sums several micro-steps
// (kept in fp32) nothing to accumulate in higher precision either. It saves, per step and
// parameter, the cast into an fp32 accumulator and half of the optimizer's gradient read.
bool gradients_in_place(int64_t partition_size, int64_t replicas, DType work_dtype, int64_t accumulation_steps);

class ShardedParamStore final : public model::ParamProvider {
 public:
  // The communicators are this rank's partition group, replication group and, with a
  // hierarchical gather, its intra-node and inter-node subgroups of the partition group.
  struct Groups {
    Communicator* partition = nullptr;
    Communicator* replication = nullptr;
    Communicator* intra_node = nullptr;  // hierarchical only
    Communicator* inter_node = nullptr;  // hierarchical only
  };

  // Allocates the shards (uninitialised) and the working buffers.
  ShardedParamStore(Backend& backend, const model::ParamLayout& layout, const Topology& topo,
                    Groups groups, StoreOptions options);
  ~ShardedParamStore() override;

  // ParamProvider
  Tensor acquire_params(int layer) override;
  void release_params(int layer) override;
  model::GradBuffer grad_buffer(int layer) override;
  void grads_ready(int layer) override;

  Backend& backend() const { return be_; }
  // This rank's shard, [shard_elements] fp32 each: layer l's slice at shard_offset(l).
  // grads() is in the work dtype instead when gradients_in_place() (the model's own).
  Tensor master() const;
  Tensor grads() const;
  Tensor adam_m() const;
  Tensor adam_v() const;
  int64_t shard_elements() const { return shard_total_; }
  bool grads_in_place() const { return in_place_grads_; }
  int64_t shard_offset(int layer) const;
  // The flat-buffer runs this shard holds, one per layer.
  std::vector<model::FlatRange> ranges() const;

  // The model's initial weights in this rank's slices; gradients and Adam states zeroed.
  void initialize(uint64_t init_seed);
  // The master weights changed (optimizer step, checkpoint, imported weights): refresh the
  // half-precision working copy that a partition size of 1 computes on.
  void master_changed();
  // The half-precision copy of the whole shard kept with p = 1 (keeps_working_copy()), for
  // the optimizer to write as it updates the master; empty when there is none.
  Tensor working_copy();
  // The optimizer's update, deferred layer by layer to each layer's next use (its gather,
  // or its working copy with p = 1) so that it overlaps the next forward
  // (runtime.overlap_optimizer; see DeferredUpdates): `update(l)` updates layer l's slices.
  void defer_update(std::function<void(int layer)> update);
  // Every deferred update done: before anything reads or writes whole shards.
  void settle_updates() { updates_.settle(); }

  // Start a step of `micro_steps` micro-steps (the last one starts the replication
  // all-reduces as its layers land); in-place gradients are zeroed here.
  void begin_step(int64_t micro_steps = 1);
  void end_micro_step();      // all reduce-scatters landed (and, every_microstep, synced)
  void end_accumulation();    // two-hop: every layer's all-reduce across replicas finished
  // Global squared gradient norm: this shard's sum of squares summed over the partition
  // group. After end_accumulation. Each layer's sum of squares is queued on the side queue
  // as soon as its gradient is final in the shard (its backward, or its landing, in the last
  // micro-step; else in end_accumulation), so that reading the gradients once more overlaps
  // the rest of the backward; here they are waited for and added in layer order.
  double grad_norm_squared();
  // Layers whose accumulated gradient holds a NaN or Inf anywhere in the partition group.
  std::vector<int> nonfinite_grad_layers();
  // Bytes of this rank's model-state shards: master weights, gradients, Adam m and v.
  size_t model_state_bytes() const;
  // Everything the store holds: the shards plus the gather and gradient working buffers.
  size_t resident_bytes() const;

 private:
  struct ParamSlot;
  struct GradSlot;
  ParamSlot* find_param_slot(int layer);
  ParamSlot& start_gather(int layer);
  void prefetch_after(size_t position);
  // Waits until `slot`'s gather (both stages, issued in order) has completed.
  void finish_gather(ParamSlot& slot);
  // Host-ordered communicators only (device-ordered ones queue stage 2 with stage 1).
  // Starts intra-node stages of hierarchical gathers in the order the gathers began (MPI
  // wants every rank to issue collectives on a communicator in one order): all of them up
  // to and including `until` (blocking on their first stage), then, without blocking, any
  // further ones whose inter-node stage has landed, stopping at the first that has not.
  void progress_gathers(const ParamSlot* until = nullptr);
  void start_intra_stage(ParamSlot& slot);
  void finish_grad_slot(GradSlot& slot);
  // end_accumulation less the gradient norm's part: every layer's gradient final in grads().
  void land_accumulation();
  // Layer `layer`'s gradient is final in grads() for this step: queue its sum of squares.
  // (Queued again if it lands again, tied weights, say: the later sum, queued after the
  // same queue's first, is the one read.)
  void queue_grad_norm(int layer);
  bool last_micro_step() const { return micro_done_ + 1 == micro_steps_; }
  // Two-hop, last micro-step: layer `layer` is complete in this rank's accumulator.
  void start_replication_all_reduce(int layer);
  bool overlaps_replication() const {
    return !opt_.sync_every_microstep && groups_.replication != nullptr && groups_.replication->size() > 1;
  }
  Tensor layer_span_view(const DeviceBuffer& buffer, int layer) const;  // work dtype
  Tensor accumulator() const;  // fp32, [shard] or [2 * shard] with every_microstep
  // p = 1 with a half-precision model: the whole model in the work dtype (else empty).
  bool keeps_working_copy() const { return topo_.partition_size == 1 && opt_.work_dtype != DType::f32; }
  DType grads_dtype() const { return in_place_grads_ ? opt_.work_dtype : DType::f32; }

  Backend& be_;
  const model::ParamLayout& layout_;
  Topology topo_;
  Groups groups_;
  StoreOptions opt_;
  int64_t shard_total_ = 0, max_layer_ = 0;
  bool in_place_grads_ = false;  // gradients_in_place(): grads_ is the model's gradient, no slots
  DeviceBuffer master_, grads_, m_, v_;
  DeviceBuffer working_;  // see keeps_working_copy()
  DeviceBuffer replication_;  // [shard] in replication_dtype when it is not f32 (and r > 1)
  std::vector<std::unique_ptr<ParamSlot>> param_slots_;
  std::vector<std::unique_ptr<GradSlot>> grad_slots_;
  // Acquire order seen in the first micro-step, replayed as the prefetch schedule.
  std::vector<int> schedule_;
  bool recording_ = true;
  size_t cursor_ = 0;
  bool on_schedule_ = true;
  uint64_t grad_age_ = 0;
  uint64_t gathers_started_ = 0;
  int64_t micro_steps_ = 1, micro_done_ = 0;
  std::vector<Request> replication_requests_;  // per layer; started this step when non-null
  std::vector<bool> replication_started_;
  // Per layer: has a gradient landed in the accumulator this step? The first landing is a
  // cast (no zeroed accumulator to read and add to); begin_step zeroes nothing, and
  // end_accumulation zeroes the layers that never landed. With gradients in place: has
  // the model been handed the layer's gradient this step (the first time, fresh)?
  std::vector<bool> landed_;
  DeviceBuffer norm_parts_;            // [layers] f64: each layer's sum of squares this step
  std::vector<double> norm_host_;      // its copy on the host
  std::vector<bool> norm_queued_;      // per layer, this step
  bool norms_complete_ = false;        // end_accumulation queued every layer's
  std::vector<ParamSlot*> pending_;  // progress_gathers' scratch
  DeferredUpdates updates_;
};

}  // namespace mics
