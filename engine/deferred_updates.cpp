#include "engine/deferred_updates.h"

#include <utility>

namespace mics {

DeferredUpdates::DeferredUpdates(SideQueue& queue, int layers)
    : queue_(queue), state_(static_cast<size_t>(layers), kDone) {
  sequence_.reserve(state_.size());  // no allocation in a step
  seen_.reserve(state_.size());
}

void DeferredUpdates::defer(std::function<void(int)> update, const std::vector<int>& order) {
  settle();
  update_ = std::move(update);
  const int layers = static_cast<int>(state_.size());
  sequence_.clear();
  seen_.assign(state_.size(), false);
  for (int l : order)
    if (l >= 0 && l < layers && !seen_[static_cast<size_t>(l)]) {
      seen_[static_cast<size_t>(l)] = true;
      sequence_.push_back(l);
    }
  for (int l = 0; l < layers; ++l)
    if (!seen_[static_cast<size_t>(l)]) sequence_.push_back(l);
  for (int l : sequence_)
    state_[static_cast<size_t>(l)] =
        queue_.has_side_queue() ? queue_.run_on_side_queue([this, l] { update_(l); }) : kAtFirstUse;
}

void DeferredUpdates::ensure(int layer) {
  int64_t& state = state_.at(static_cast<size_t>(layer));
  if (state == kDone) return;
  if (state == kAtFirstUse) update_(layer);
  else queue_.wait_for_fence(state);
  state = kDone;
}

void DeferredUpdates::settle() {
  for (int l = 0; l < static_cast<int>(state_.size()); ++l) ensure(l);
}

}  // namespace mics
