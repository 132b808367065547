#pragma once
// Carves all of a model's activations out of one allocation made at construction.
// Used twice: once measuring (no memory), once for real with the measured size.
#include <cstddef>

#include "kernels/ops.h"

namespace mics::model {

class Arena {
 public:
  Arena() = default;  // measuring: take() returns views without memory
  Arena(Backend& backend, size_t bytes) : buffer_(backend, bytes) {}

  Tensor take(DType dtype, Shape shape) {
    const size_t bytes = (static_cast<size_t>(shape.numel()) * dtype_size(dtype) + 255) / 256 * 256;
    void* ptr = buffer_.data() ? static_cast<char*>(buffer_.data()) + used_ : nullptr;
    used_ += bytes;
    if (buffer_.data() && used_ > buffer_.bytes()) throw ShapeError("activation arena overflow");
    return Tensor(ptr, dtype, shape);
  }
  IntTensor take_ints(Shape shape) {
    Tensor t = take(DType::f32, shape);  // int32 and fp32 have the same size
    return IntTensor{static_cast<int32_t*>(t.data), shape};
  }
  size_t used() const { return used_; }

 private:
  DeviceBuffer buffer_;
  size_t used_ = 0;
};

}  // namespace mics::model
