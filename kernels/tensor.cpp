#include "kernels/tensor.h"

#include <sstream>

namespace mics {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16:
    case DType::f16: return 2;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "fp32";
    case DType::f64: return "fp64";
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
  }
  return "?";
}

Shape::Shape(std::initializer_list<int64_t> list) {
  if (list.size() > kMaxRank) throw ShapeError("tensor rank above 4");
  for (int64_t d : list) dims[static_cast<size_t>(rank++)] = d;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& other) const {
  if (rank != other.rank) return false;
  for (int i = 0; i < rank; ++i)
    if (dims[static_cast<size_t>(i)] != other.dims[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream out;
  out << '[';
  for (int i = 0; i < rank; ++i) out << (i ? ", " : "") << dims[static_cast<size_t>(i)];
  out << ']';
  return out.str();
}

Tensor Tensor::slice(int64_t offset, Shape new_shape) const {
  if (offset < 0 || offset + new_shape.numel() > numel())
    throw ShapeError("slice " + std::to_string(offset) + "+" + new_shape.str() +
                     " outside a tensor of shape " + shape.str());
  return Tensor(static_cast<char*>(data) + static_cast<size_t>(offset) * dtype_size(dtype),
                dtype, new_shape);
}

Tensor Tensor::reshaped(Shape new_shape) const {
  if (new_shape.numel() != numel())
    throw ShapeError("cannot reshape " + shape.str() + " to " + new_shape.str());
  return Tensor(data, dtype, new_shape);
}

void expect_shape(const char* op, const char* arg, const Tensor& t, Shape shape) {
  if (!(t.shape == shape))
    throw ShapeError(std::string(op) + ": " + arg + " has shape " + t.shape.str() +
                     ", expected " + shape.str());
}

void expect_rank(const char* op, const char* arg, const Tensor& t, int rank) {
  if (t.shape.rank != rank)
    throw ShapeError(std::string(op) + ": " + arg + " has shape " + t.shape.str() + ", expected " +
                     std::to_string(rank) + " dimensions");
}

void expect_numel(const char* op, const char* arg, const Tensor& t, int64_t n) {
  if (t.numel() != n)
    throw ShapeError(std::string(op) + ": " + arg + " has shape " + t.shape.str() + ", expected " +
                     std::to_string(n) + " elements");
}

void expect_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype != b.dtype)
    throw ShapeError(std::string(op) + ": mixed dtypes " + dtype_name(a.dtype) + " and " +
                     dtype_name(b.dtype));
}

}  // namespace mics
