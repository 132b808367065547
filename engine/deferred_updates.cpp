#include "engine/deferred_updates.h"

#include <algorithm>
#include <utility>

namespace mics {

DeferredUpdates::DeferredUpdates(SideQueue& queue, int layers)
    : queue_(queue), state_(static_cast<size_t>(layers), kDone) {
  sequence_.reserve(state_.size());  // no allocation in a step
  seen_.reserve(state_.size());
}

void DeferredUpdates::defer(std::function<void(int)> update, const std::vector<int>& order, size_t in_line) {
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
  if (!queue_.has_side_queue()) {
    for (int l : sequence_) state_[static_cast<size_t>(l)] = kAtFirstUse;
    return;
  }
  // The layers the forward waits for before its first op (the one it reads first, and
  // those whose gathers are prefetched with it) are updated on the main queue, after the
  // others are queued on the side queue (so that they need not wait for them): on the main
  // queue they have the whole device, not what a bounded side queue may hold.
  const size_t first = std::min(in_line, sequence_.size());
  for (size_t i = first; i < sequence_.size(); ++i) {
    const int l = sequence_[i];
    state_[static_cast<size_t>(l)] = queue_.run_on_side_queue([this, l] { update_(l); });
  }
  for (size_t i = 0; i < first; ++i) update_(sequence_[i]);
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
