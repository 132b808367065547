#include "kernels/ops.h"

#include <utility>

namespace mics {

DeviceBuffer::DeviceBuffer(Backend& backend, size_t bytes)
    : backend_(&backend), ptr_(bytes ? backend.allocate(bytes) : nullptr), bytes_(bytes) {}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : backend_(std::exchange(other.backend_, nullptr)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) backend_->release(ptr_);
    backend_ = std::exchange(other.backend_, nullptr);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) backend_->release(ptr_);
}

Tensor DeviceBuffer::view(DType dtype, Shape shape) const {
  if (static_cast<size_t>(shape.numel()) * dtype_size(dtype) > bytes_)
    throw ShapeError("view " + shape.str() + " larger than its buffer");
  return Tensor(ptr_, dtype, shape);
}

IntTensor DeviceBuffer::int_view(Shape shape) const {
  if (static_cast<size_t>(shape.numel()) * sizeof(int32_t) > bytes_)
    throw ShapeError("view " + shape.str() + " larger than its buffer");
  return IntTensor{static_cast<int32_t*>(ptr_), shape};
}

}  // namespace mics
