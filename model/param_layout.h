#pragma once
// The flat parameter buffer's table of contents. Layer-major: embeddings are layer 0,
// transformer blocks 1..L, the head L+1. Each tensor starts at a multiple of kTensorAlign
// elements and each layer's span is padded to a multiple of the shard multiple
// (lcm(p, 128)), so a layer splits evenly into p shards and gathers in one collective.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/tensor.h"

namespace mics::model {

inline constexpr int64_t kTensorAlign = 64;

enum class Init : uint8_t { normal, zeros, ones };

struct ParamTensor {
  std::string name;
  Shape shape;
  int layer = 0;
  int64_t offset = 0;           // in the flat buffer
  int64_t offset_in_layer = 0;  // from the start of its layer's span
  bool decay = false;           // in the weight-decay mask
  Init init = Init::zeros;
  double init_std = 0.0;        // for Init::normal
  // Which draws of the seed's stream its values take: its offset in the layout of
  // p = 1 (padding to 128), the same whatever the partition size pads to.
  int64_t draw_offset = 0;
  int64_t numel() const { return shape.numel(); }
};

struct LayerSpan {
  std::string name;   // "embeddings", "layers.3", "head"
  int64_t begin = 0;  // flat offset
  int64_t size = 0;   // padded size, a multiple of the shard multiple
};

class ParamLayout {
 public:
  class Builder {
   public:
    void begin_layer(std::string name);
    void add(std::string name, Shape shape, bool decay, Init init, double init_std = 0.0);
    ParamLayout finish(int64_t shard_multiple);

   private:
    std::vector<ParamTensor> tensors_;
    std::vector<std::string> layer_names_;
    std::vector<int64_t> layer_used_;  // unpadded, aligned size of each layer so far
  };

  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const std::vector<LayerSpan>& layers() const { return layers_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int64_t total_elements() const { return total_; }  // padded flat size
  int64_t parameter_count() const { return params_; }  // real parameters
  int64_t shard_multiple() const { return shard_multiple_; }
  // Throws std::out_of_range naming the tensor when it is not in the layout.
  const ParamTensor& at(std::string_view name) const;

 private:
  std::vector<ParamTensor> tensors_;
  std::vector<LayerSpan> layers_;
  std::unordered_map<std::string, size_t> index_;
  int64_t total_ = 0;
  int64_t params_ = 0;
  int64_t shard_multiple_ = 1;
};

// A run of the flat buffer held locally: flat elements [flat_begin, flat_begin + size)
// sit at local_offset of the holder's buffer (a rank's shard is one run per layer).
struct FlatRange {
  int64_t flat_begin = 0, size = 0, local_offset = 0;
};

// Padding multiple for partition size p: lcm(p, 128).
int64_t shard_multiple_for(int64_t partition_size);

// Fills out[0, end - begin) with the initial values of flat elements [begin, end):
// a pure function of the seed and the element's place in its tensor (draw_offset), so every
// shard initialises its own slice and all partition sizes start from the same model.
// Padding is zero.
void init_parameters(const ParamLayout& layout, uint64_t seed, int64_t begin, int64_t end,
                     float* out);

}  // namespace mics::model
