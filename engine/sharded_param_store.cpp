#include "engine/sharded_param_store.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace mics {

namespace {

// Keeps `buffer`'s memory allocated for the rest of the process, unowned: a collective
// that could not be finished may still write into it, and the job is ending anyway.
void abandon(DeviceBuffer& buffer) { new DeviceBuffer(std::move(buffer)); }  // NOLINT: leaked on purpose

}  // namespace

// A gathered layer: the whole span in working precision. A hierarchical gather runs in
// two stages; the second starts once the first has landed.
struct ShardedParamStore::ParamSlot {
  DeviceBuffer buffer;
  int layer = -1;
  bool in_use = false;
  int stage = 0;  // 0 idle, 1 inter-node (or flat) in flight, 2 intra-node in flight, 3 ready
  uint64_t started = 0;  // order in which gathers began
  Request request;
};

// A layer's full gradient as the model writes it, and the shard the reduce-scatter leaves.
struct ShardedParamStore::GradSlot {
  DeviceBuffer work, shard;
  int layer = -1;
  bool open = false;  // handed to the model, not yet ready
  Request request;    // reduce-scatter in flight
  uint64_t age = 0;
};

namespace {
size_t floats(int64_t n) { return sizeof(float) * static_cast<size_t>(n); }
}  // namespace

bool gradients_in_place(int64_t partition_size, int64_t replicas, DType work_dtype, int64_t accumulation_steps) {
  return partition_size == 1 && replicas == 1 && (work_dtype == DType::f32 || accumulation_steps == 1);
}

Tensor ShardedParamStore::accumulator() const {
  return grads_.view(DType::f32, {static_cast<int64_t>(grads_.bytes() / sizeof(float))});
}

ShardedParamStore::ShardedParamStore(Backend& backend, const model::ParamLayout& layout,
                                     const Topology& topo, Groups groups, StoreOptions options)
    : be_(backend), layout_(layout), topo_(topo), groups_(groups), opt_(options),
      updates_(backend, static_cast<int>(layout.num_layers())) {
  const int64_t p = topo.partition_size;
  if (layout.shard_multiple() % p != 0)
    throw std::logic_error("layout not padded for partition size " + std::to_string(p));
  for (const model::LayerSpan& s : layout.layers()) max_layer_ = std::max(max_layer_, s.size);
  shard_total_ = layout.total_elements() / p;
  const int64_t replicas = groups.replication != nullptr ? groups.replication->size() : 1;
  in_place_grads_ = gradients_in_place(p, replicas, opt_.work_dtype, opt_.accumulation_steps);
  master_ = DeviceBuffer(backend, floats(shard_total_));
  if (in_place_grads_)
    grads_ = DeviceBuffer(backend, dtype_size(opt_.work_dtype) * static_cast<size_t>(shard_total_));
  else
    grads_ = DeviceBuffer(backend, floats(shard_total_ * (opt_.sync_every_microstep ? 2 : 1)));
  m_ = DeviceBuffer(backend, floats(shard_total_));
  v_ = DeviceBuffer(backend, floats(shard_total_));
  const size_t work = dtype_size(opt_.work_dtype);
  if (keeps_working_copy()) working_ = DeviceBuffer(backend, work * static_cast<size_t>(shard_total_));
  if (overlaps_replication() && opt_.replication_dtype != DType::f32)
    replication_ = DeviceBuffer(backend, dtype_size(opt_.replication_dtype) * static_cast<size_t>(shard_total_));


  // With p = 1 the shard is the whole model: layers are used in place, nothing gathered.
  const int param_slots = p > 1 ? opt_.prefetch + 2 : 0;
  for (int i = 0; i < param_slots; ++i) {
    param_slots_.push_back(std::make_unique<ParamSlot>());
    param_slots_.back()->buffer = DeviceBuffer(backend, work * static_cast<size_t>(max_layer_));
  }
  pending_.reserve(param_slots_.size());
  const int grad_slots = in_place_grads_ ? 0 : 3;
  for (int i = 0; i < grad_slots; ++i) {  // head and embeddings open together, one reducing
    grad_slots_.push_back(std::make_unique<GradSlot>());
    grad_slots_.back()->work = DeviceBuffer(backend, work * static_cast<size_t>(max_layer_));
    // With p = 1 the layer's gradient is added to the accumulator directly.
    if (p > 1) grad_slots_.back()->shard = DeviceBuffer(backend, work * static_cast<size_t>(max_layer_ / p));
  }
  landed_.assign(static_cast<size_t>(layout.num_layers()), false);
  norm_parts_ = DeviceBuffer(backend, sizeof(double) * static_cast<size_t>(layout.num_layers()));
  norm_host_.assign(static_cast<size_t>(layout.num_layers()), 0.0);
  norm_queued_.assign(static_cast<size_t>(layout.num_layers()), false);
}

void ShardedParamStore::initialize(uint64_t init_seed) {
  // Each rank initialises only its own slices; the values are those of the whole model.
  std::vector<float> init(static_cast<size_t>(shard_total_));
  for (const model::FlatRange& r : ranges())
    model::init_parameters(layout_, init_seed, r.flat_begin, r.flat_begin + r.size,
                           init.data() + r.local_offset);
  be_.copy_from_host(master_.data(), init.data(), floats(shard_total_));
  be_.fill_zero(in_place_grads_ ? grads() : accumulator());
  be_.fill_zero(adam_m());
  be_.fill_zero(adam_v());
  master_changed();
}

void ShardedParamStore::master_changed() {
  if (keeps_working_copy()) be_.cast(working_copy(), master());
}

void ShardedParamStore::defer_update(std::function<void(int)> update) {
  // The order the first micro-step acquired the layers. Acquiring the first layer also
  // starts the gathers of the next `prefetch`, each behind its update on the main queue,
  // so the forward's first op waits for those too: they are updated in line.
  const size_t in_line = 1 + (topo_.partition_size > 1 ? static_cast<size_t>(std::max(opt_.prefetch, 0)) : 0);
  updates_.defer(std::move(update), schedule_, in_line);
}

Tensor ShardedParamStore::working_copy() {
  return keeps_working_copy() ? working_.view(opt_.work_dtype, {shard_total_}) : Tensor{};
}

ShardedParamStore::~ShardedParamStore() {
  // Nothing may still write into buffers that are about to be freed, and every rank must
  // have issued the same collectives: finish the second stages in order first.
  try {
    const ParamSlot* last = nullptr;
    for (auto& s : param_slots_)
      if (s->stage == 1 && (last == nullptr || s->started > last->started)) last = s.get();
    progress_gathers(last);
    for (auto& s : param_slots_)
      if (s->request) (topo_.hierarchical ? groups_.intra_node : groups_.partition)->wait(s->request);
    for (auto& s : grad_slots_)
      if (s->request) groups_.partition->wait(s->request);
    for (Request& r : replication_requests_)
      if (r) groups_.replication->wait(r);
  } catch (const std::exception& e) {
    // Only while a failure unwinds the run (a peer gone, a timeout): the job is ending and
    // its own error is the one to report; an exception escaping here would end the process
    // before that (std::terminate).
    spdlog::error("collectives still in flight could not be finished while the run stopped: {}", e.what());
    for (auto& s : param_slots_) abandon(s->buffer);
    for (auto& s : grad_slots_) {
      abandon(s->work);
      abandon(s->shard);
    }
    abandon(grads_);
    abandon(replication_);
  }
}

int64_t ShardedParamStore::shard_offset(int layer) const {
  return layout_.layers()[static_cast<size_t>(layer)].begin / topo_.partition_size;
}

std::vector<model::FlatRange> ShardedParamStore::ranges() const {
  std::vector<model::FlatRange> out;
  const int64_t p = topo_.partition_size;
  for (const model::LayerSpan& s : layout_.layers())
    out.push_back({s.begin + topo_.shard_index() * (s.size / p), s.size / p, s.begin / p});
  return out;
}

Tensor ShardedParamStore::master() const { return master_.view(DType::f32, {shard_total_}); }
Tensor ShardedParamStore::grads() const { return grads_.view(grads_dtype(), {shard_total_}); }
Tensor ShardedParamStore::adam_m() const { return m_.view(DType::f32, {shard_total_}); }
Tensor ShardedParamStore::adam_v() const { return v_.view(DType::f32, {shard_total_}); }

Tensor ShardedParamStore::layer_span_view(const DeviceBuffer& buffer, int layer) const {
  const int64_t size = layout_.layers()[static_cast<size_t>(layer)].size;
  return buffer.view(opt_.work_dtype, {size});
}

// ---- parameters ----

ShardedParamStore::ParamSlot* ShardedParamStore::find_param_slot(int layer) {
  for (auto& s : param_slots_)
    if (s->layer == layer && !s->in_use) return s.get();
  return nullptr;
}

ShardedParamStore::ParamSlot& ShardedParamStore::start_gather(int layer) {
  ParamSlot* slot = nullptr;
  for (auto& s : param_slots_)  // an idle slot first, else one holding an unneeded prefetch
    if (!s->in_use && (slot == nullptr || s->layer == -1)) slot = s.get();
  if (slot == nullptr) throw std::logic_error("more layers acquired at once than gather slots");
  finish_gather(*slot);  // the buffer may be reused only once its collective has finished
  const int64_t chunk = layout_.layers()[static_cast<size_t>(layer)].size / topo_.partition_size;
  const DType work = opt_.work_dtype;
  char* base = static_cast<char*>(slot->buffer.data());
  updates_.ensure(layer);  // the cast below reads the master slice
  auto at = [&](int64_t element) { return base + static_cast<size_t>(element) * dtype_size(work); };
  be_.cast(Tensor(at(topo_.shard_index() * chunk), work, {chunk}), master().slice(shard_offset(layer), {chunk}));
  slot->layer = layer;
  slot->stage = 1;
  slot->started = gathers_started_++;
  if (topo_.hierarchical) {
    // Stage 1: the ranks with this local rank on the group's nodes exchange their chunks,
    // which land k chunks apart, where the full layer wants them.
    const int k = topo_.ranks_per_node;
    slot->request = groups_.inter_node->all_gather(at(topo_.local_rank() * chunk), work, static_cast<size_t>(chunk), 1,
                                                   static_cast<size_t>(k * chunk), 0);
    // Where the device keeps the order, stage 2 is queued behind stage 1 now, so every rank
    // submits its collectives in program order (NCCL deadlocks on concurrent communicators
    // fed in different orders); elsewhere it starts once the host sees stage 1 done.
    if (groups_.intra_node->orders_on_device()) start_intra_stage(*slot);
  } else {
    slot->request = groups_.partition->all_gather(base, work, static_cast<size_t>(chunk), 1, static_cast<size_t>(chunk), 0);
  }
  return *slot;
}

Tensor ShardedParamStore::acquire_params(int layer) {
  if (recording_) {
    schedule_.push_back(layer);
  } else {
    on_schedule_ = on_schedule_ && cursor_ < schedule_.size() && schedule_[cursor_] == layer;
  }
  const size_t position = cursor_++;
  if (topo_.partition_size == 1) {
    updates_.ensure(layer);
    const int64_t size = layout_.layers()[static_cast<size_t>(layer)].size;
    return keeps_working_copy() ? working_copy().slice(shard_offset(layer), {size})
                                : master().slice(shard_offset(layer), {size});
  }

  ParamSlot* slot = find_param_slot(layer);
  if (slot == nullptr) slot = &start_gather(layer);
  slot->in_use = true;
  progress_gathers(slot);
  // Data is read only after the collective has completed.
  (topo_.hierarchical ? groups_.intra_node : groups_.partition)->wait(slot->request);
  slot->stage = 3;
  prefetch_after(position);
  return layer_span_view(slot->buffer, layer);
}

void ShardedParamStore::finish_gather(ParamSlot& slot) {
  if (!slot.request) return;
  if (topo_.hierarchical && slot.stage == 1) progress_gathers(&slot);  // stage 2, in order
  (topo_.hierarchical ? groups_.intra_node : groups_.partition)->wait(slot.request);
}

void ShardedParamStore::prefetch_after(size_t position) {
  if (recording_ || !on_schedule_) return;
  for (size_t next = position + 1; next < schedule_.size() && next <= position + static_cast<size_t>(opt_.prefetch); ++next) {
    const int layer = schedule_[next];
    bool present = false;
    for (auto& s : param_slots_) present = present || s->layer == layer;
    if (present) continue;
    bool free_slot = false;
    for (auto& s : param_slots_) free_slot = free_slot || (!s->in_use && s->layer == -1);
    if (!free_slot) return;
    start_gather(layer);
  }
}

void ShardedParamStore::start_intra_stage(ParamSlot& slot) {
  // Stage 2: the node's ranks exchange what each gathered from its rail: n chunks each,
  // k chunks apart. It reads stage 1's result: queued behind it on the device, or (host
  // order) stage 1 has completed and its request is null by now.
  const int64_t chunk = layout_.layers()[static_cast<size_t>(slot.layer)].size / topo_.partition_size;
  const int k = topo_.ranks_per_node;
  slot.stage = 2;
  Request stage1 = std::move(slot.request);
  slot.request = groups_.intra_node->all_gather_after(
      stage1, slot.buffer.data(), opt_.work_dtype, static_cast<size_t>(chunk), static_cast<size_t>(topo_.nodes_per_partition()),
      static_cast<size_t>(chunk), static_cast<size_t>(k * chunk));
}

void ShardedParamStore::progress_gathers(const ParamSlot* until) {
  if (!topo_.hierarchical) return;
  pending_.clear();  // capacity reserved at construction: no allocation inside a step
  for (auto& s : param_slots_)
    if (s->stage == 1) pending_.push_back(s.get());
  std::sort(pending_.begin(), pending_.end(), [](auto* a, auto* b) { return a->started < b->started; });
  for (ParamSlot* s : pending_) {
    if (until != nullptr && s->started <= until->started) {
      groups_.inter_node->wait(s->request);
    } else if (!groups_.inter_node->test(s->request)) {
      break;
    }
    start_intra_stage(*s);
  }
}

void ShardedParamStore::release_params(int layer) {
  if (topo_.partition_size == 1) return;
  progress_gathers();  // keep the next layers' second stages moving
  for (auto& s : param_slots_) {
    if (s->layer == layer && s->in_use) {
      s->in_use = false;
      s->layer = -1;
      s->stage = 0;
      return;
    }
  }
  throw std::logic_error("release of layer " + std::to_string(layer) + " that was not acquired");
}

// ---- gradients ----

model::GradBuffer ShardedParamStore::grad_buffer(int layer) {
  // Last step's update of the layer reads the gradients about to be written (in place, or
  // the accumulator this one lands in). Every model acquires a layer before its gradient,
  // which has ensured it already; this keeps a model that does not from racing it.
  updates_.ensure(layer);
  if (in_place_grads_) {
    // Not zeroed: the layer's first gradient of the step overwrites last step's (the gaps
    // between tensors were zeroed once, and nothing writes them). end_accumulation zeroes
    // a layer the model never asked for.
    const bool first = !landed_[static_cast<size_t>(layer)];
    landed_[static_cast<size_t>(layer)] = true;
    return {grads().slice(shard_offset(layer), {layout_.layers()[static_cast<size_t>(layer)].size}), first};
  }
  for (auto& s : grad_slots_)
    if (s->open && s->layer == layer) return {layer_span_view(s->work, layer), false};
  // A free slot has landed its last layer in the accumulator. (A finished request alone is
  // not enough: a communicator may complete collectives before returning.)
  GradSlot* slot = nullptr;
  for (auto& s : grad_slots_)
    if (!s->open && s->layer < 0 && (slot == nullptr || s->age < slot->age)) slot = s.get();
  if (slot == nullptr) {  // every slot busy: land the oldest reduce-scatter
    for (auto& s : grad_slots_)
      if (!s->open && (slot == nullptr || s->age < slot->age)) slot = s.get();
    if (slot == nullptr) throw std::logic_error("more gradient buffers open than slots");
    finish_grad_slot(*slot);
  }
  slot->layer = layer;
  slot->open = true;
  slot->age = grad_age_++;
  // Zeroed, not handed out fresh: a slot serves layers whose gaps between tensors differ.
  Tensor view = layer_span_view(slot->work, layer);
  be_.fill_zero(view);
  return {view, false};
}

void ShardedParamStore::grads_ready(int layer) {
  if (in_place_grads_) {  // nothing to reduce or land
    if (last_micro_step()) queue_grad_norm(layer);
    return;
  }
  for (auto& s : grad_slots_) {
    if (s->open && s->layer == layer) {
      s->open = false;
      const int64_t chunk = layout_.layers()[static_cast<size_t>(layer)].size / topo_.partition_size;
      if (topo_.partition_size == 1) {
        finish_grad_slot(*s);  // nothing to reduce: the accumulator takes the layer's gradient
      } else {
        s->request = groups_.partition->reduce_scatter(s->work.data(), s->shard.data(), opt_.work_dtype,
                                                       static_cast<size_t>(chunk));
      }
      return;
    }
  }
  throw std::logic_error("grads_ready for layer " + std::to_string(layer) + " without a buffer");
}

void ShardedParamStore::finish_grad_slot(GradSlot& slot) {
  if (slot.layer < 0) return;
  groups_.partition->wait(slot.request);
  const int64_t chunk = layout_.layers()[static_cast<size_t>(slot.layer)].size / topo_.partition_size;
  // every_microstep keeps this micro-step's gradient apart until it is synchronised.
  const int64_t base = opt_.sync_every_microstep ? shard_total_ : 0;
  Tensor acc = accumulator().slice(base + shard_offset(slot.layer), {chunk});
  // fp32 accumulation of the (possibly half-precision) reduced gradient.
  const Tensor reduced = (topo_.partition_size == 1 ? slot.work : slot.shard).view(opt_.work_dtype, {chunk});
  const int layer = slot.layer;
  if (opt_.sync_every_microstep || landed_[static_cast<size_t>(layer)])
    be_.add(acc, acc, reduced);
  else
    be_.cast(acc, reduced);  // acc = 0 + reduced, exactly
  landed_[static_cast<size_t>(layer)] = true;
  slot.layer = -1;
  if (!last_micro_step()) return;
  if (overlaps_replication())
    start_replication_all_reduce(layer);
  else if (!opt_.sync_every_microstep)
    queue_grad_norm(layer);  // (replicas change it until end_accumulation)
}

void ShardedParamStore::queue_grad_norm(int layer) {
  const int64_t chunk = layout_.layers()[static_cast<size_t>(layer)].size / topo_.partition_size;
  const Tensor part = norm_parts_.view(DType::f64, {layout_.num_layers()}).slice(layer, {1});
  const Tensor grad = grads().slice(shard_offset(layer), {chunk});
  be_.run_on_side_queue([&] { be_.sum_squares_into(part, grad); });
  norm_queued_[static_cast<size_t>(layer)] = true;
}

void ShardedParamStore::start_replication_all_reduce(int layer) {
  if (replication_started_[static_cast<size_t>(layer)])
    throw std::logic_error("layer " + std::to_string(layer) +
                           "'s gradients landed twice in the last micro-step, after its all-reduce began");
  const int64_t chunk = layout_.layers()[static_cast<size_t>(layer)].size / topo_.partition_size;
  Tensor sum = accumulator().slice(shard_offset(layer), {chunk});
  if (replication_.data() != nullptr) {  // sent in half precision, widened again in end_accumulation
    Tensor narrow = replication_.view(opt_.replication_dtype, {shard_total_}).slice(shard_offset(layer), {chunk});
    be_.cast(narrow, sum);
    sum = narrow;
  }
  // Every replica lands the layers in the same order, so the collectives match up.
  replication_requests_[static_cast<size_t>(layer)] =
      groups_.replication->all_reduce(sum.data, sum.dtype, static_cast<size_t>(chunk));
  replication_started_[static_cast<size_t>(layer)] = true;
}

void ShardedParamStore::begin_step(int64_t micro_steps) {
  norms_complete_ = false;  // first: a step that fails to begin has no norm either
  if (micro_steps < 1) throw std::logic_error("a step needs at least one micro-step");
  micro_steps_ = micro_steps;
  micro_done_ = 0;
  replication_started_.assign(static_cast<size_t>(layout_.num_layers()), false);
  replication_requests_.resize(static_cast<size_t>(layout_.num_layers()));
  landed_.assign(static_cast<size_t>(layout_.num_layers()), false);
  norm_queued_.assign(norm_queued_.size(), false);
  // A gather prefetched last step but never acquired (the layers were used out of the
  // recorded order) holds the weights from before the optimizer step: drop it.
  for (auto& s : param_slots_)
    if (!s->in_use && s->layer != -1) {
      finish_gather(*s);
      s->layer = -1;
      s->stage = 0;
    }
  if (in_place_grads_) {
    if (micro_steps > opt_.accumulation_steps && opt_.work_dtype != DType::f32)
      throw std::logic_error("a step of " + std::to_string(micro_steps) + " micro-steps on a store built for " +
                             std::to_string(opt_.accumulation_steps) + " (half-precision gradients in place)");
    return;  // each layer's first gradient of the step overwrites the last (grad_buffer)
  }
  // every_microstep adds each synchronised micro-step into the accumulator's first half.
  if (opt_.sync_every_microstep) {
    updates_.settle();  // the last step's updates read the gradients zeroed here
    be_.fill_zero(accumulator());
  }
}

void ShardedParamStore::end_micro_step() {
  for (auto& s : grad_slots_) {
    if (s->open) throw std::logic_error("layer " + std::to_string(s->layer) + " gradients never marked ready");
    finish_grad_slot(*s);
  }
  ++micro_done_;
  recording_ = false;
  cursor_ = 0;
  on_schedule_ = true;
  if (opt_.sync_every_microstep && !in_place_grads_) {
    Tensor micro = grads_.view(DType::f32, {2 * shard_total_}).slice(shard_total_, {shard_total_});
    Request r = groups_.replication->all_reduce(micro.ptr<float>(), static_cast<size_t>(shard_total_));
    groups_.replication->wait(r);
    be_.add(grads(), grads(), micro);
    be_.fill_zero(micro);
  }
}

void ShardedParamStore::end_accumulation() {
  land_accumulation();
  // The layers whose sums were not queued as they became final: those the last micro-step
  // left alone, and every layer where the replicas summed them just now.
  for (int l = 0; l < layout_.num_layers(); ++l)
    if (!norm_queued_[static_cast<size_t>(l)]) queue_grad_norm(l);
  norms_complete_ = true;
}

void ShardedParamStore::land_accumulation() {
  if (in_place_grads_) {  // every layer's gradient is complete where the model wrote it
    for (int l = 0; l < layout_.num_layers(); ++l)
      if (!landed_[static_cast<size_t>(l)]) {
        updates_.ensure(l);  // last step's update of a layer never used since reads these
        be_.fill_zero(grads().slice(shard_offset(l), {layout_.layers()[static_cast<size_t>(l)].size}));
      }
    return;
  }
  if (!opt_.sync_every_microstep)
    for (int l = 0; l < layout_.num_layers(); ++l)
      if (!landed_[static_cast<size_t>(l)]) {
        const int64_t chunk = layout_.layers()[static_cast<size_t>(l)].size / topo_.partition_size;
        updates_.ensure(l);  // last step's update of a layer never used since reads these
        be_.fill_zero(accumulator().slice(shard_offset(l), {chunk}));
      }
  if (!overlaps_replication()) return;  // every_microstep synced already; one replica has nothing to sync
  if (micro_done_ != micro_steps_)
    throw std::logic_error("end_accumulation after " + std::to_string(micro_done_) + " of " +
                           std::to_string(micro_steps_) + " micro-steps");
  // A layer that got no gradient in the last micro-step is still summed, after the others.
  for (int l = 0; l < layout_.num_layers(); ++l)
    if (!replication_started_[static_cast<size_t>(l)]) start_replication_all_reduce(l);
  for (Request& r : replication_requests_) groups_.replication->wait(r);
  if (replication_.data() != nullptr) be_.cast(accumulator(), replication_.view(opt_.replication_dtype, {shard_total_}));
}

double ShardedParamStore::grad_norm_squared() {
  if (!norms_complete_) throw std::logic_error("grad_norm_squared before end_accumulation");
  be_.synchronize();  // the side queue's sums
  be_.copy_to_host(norm_host_.data(), norm_parts_.data(), sizeof(double) * norm_host_.size());
  double local = 0;
  for (double part : norm_host_) local += part;
  return groups_.partition->sum_scalar(local);
}

std::vector<int> ShardedParamStore::nonfinite_grad_layers() {
  std::vector<int> bad;
  for (int l = 0; l < layout_.num_layers(); ++l) {
    const int64_t chunk = layout_.layers()[static_cast<size_t>(l)].size / topo_.partition_size;
    const double local = static_cast<double>(be_.count_nonfinite(grads().slice(shard_offset(l), {chunk})));
    if (groups_.partition->sum_scalar(local) > 0) bad.push_back(l);
  }
  return bad;
}

size_t ShardedParamStore::model_state_bytes() const {
  return master_.bytes() + grads_.bytes() + m_.bytes() + v_.bytes();
}

size_t ShardedParamStore::resident_bytes() const {
  size_t total = model_state_bytes() + working_.bytes() + replication_.bytes() + norm_parts_.bytes();
  for (const auto& s : param_slots_) total += s->buffer.bytes();
  for (const auto& s : grad_slots_) total += s->work.bytes() + s->shard.bytes();
  return total;
}

}  // namespace mics
