#include "model/param_layout.h"

#include "kernels/counter_hash.h"

#include <cmath>
#include <numbers>
#include <numeric>
#include <stdexcept>

namespace mics::model {

namespace {
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Standard normal from two hashed uniforms (Box-Muller).
double normal_at(uint64_t seed, uint64_t index) {
  const uint64_t a = mix_seed(seed, 2 * index);
  const uint64_t b = mix_seed(seed, 2 * index + 1);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;          // [0, 1)
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}
}  // namespace

void ParamLayout::Builder::begin_layer(std::string name) {
  layer_names_.push_back(std::move(name));
  layer_used_.push_back(0);
}

void ParamLayout::Builder::add(std::string name, Shape shape, bool decay, Init init,
                               double init_std) {
  if (layer_names_.empty()) throw std::logic_error("ParamLayout: add() before begin_layer()");
  ParamTensor t;
  t.name = std::move(name);
  t.shape = shape;
  t.layer = static_cast<int>(layer_names_.size()) - 1;
  t.offset_in_layer = layer_used_.back();
  t.decay = decay;
  t.init = init;
  t.init_std = init_std;
  layer_used_.back() = round_up(t.offset_in_layer + t.numel(), kTensorAlign);
  tensors_.push_back(std::move(t));
}

ParamLayout ParamLayout::Builder::finish(int64_t shard_multiple) {
  if (shard_multiple <= 0) throw std::invalid_argument("ParamLayout: shard multiple must be > 0");
  ParamLayout layout;
  layout.shard_multiple_ = shard_multiple;
  int64_t begin = 0;
  for (size_t l = 0; l < layer_names_.size(); ++l) {
    LayerSpan span{layer_names_[l], begin, round_up(std::max<int64_t>(layer_used_[l], 1), shard_multiple)};
    begin += span.size;
    layout.layers_.push_back(span);
  }
  layout.total_ = begin;
  // The layers' starts under the smallest padding (p = 1's), for the draws: a partition size
  // that 128 does not divide pads the layers further, and must not shift the values.
  std::vector<int64_t> draw_begin(layer_names_.size(), 0);
  for (size_t l = 1; l < layer_names_.size(); ++l)
    draw_begin[l] = draw_begin[l - 1] + round_up(std::max<int64_t>(layer_used_[l - 1], 1), shard_multiple_for(1));
  for (ParamTensor& t : tensors_) {
    t.offset = layout.layers_[static_cast<size_t>(t.layer)].begin + t.offset_in_layer;
    t.draw_offset = draw_begin[static_cast<size_t>(t.layer)] + t.offset_in_layer;
    layout.params_ += t.numel();
    if (!layout.index_.emplace(t.name, layout.tensors_.size()).second)
      throw std::logic_error("ParamLayout: duplicate tensor " + t.name);
    layout.tensors_.push_back(std::move(t));
  }
  return layout;
}

const ParamTensor& ParamLayout::at(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end()) throw std::out_of_range("no parameter named " + std::string(name));
  return tensors_[it->second];
}

int64_t shard_multiple_for(int64_t partition_size) {
  return std::lcm(std::max<int64_t>(partition_size, 1), int64_t{128});
}

void init_parameters(const ParamLayout& layout, uint64_t seed, int64_t begin, int64_t end,
                     float* out) {
  std::fill(out, out + (end - begin), 0.0f);
  for (const ParamTensor& t : layout.tensors()) {
    const int64_t lo = std::max(begin, t.offset), hi = std::min(end, t.offset + t.numel());
    // Every value is a function of its place alone, so threads change nothing but the time
    // (a 10B-parameter model has 10^10 normal draws to make at start-up).
#pragma omp parallel for schedule(static) if (hi - lo > 65536)
    for (int64_t i = lo; i < hi; ++i) {
      float& v = out[i - begin];
      switch (t.init) {
        case Init::zeros: v = 0.0f; break;
        case Init::ones: v = 1.0f; break;
        case Init::normal:
          v = static_cast<float>(t.init_std * normal_at(seed, static_cast<uint64_t>(t.draw_offset + (i - t.offset))));
          break;
      }
    }
  }
}

}  // namespace mics::model
