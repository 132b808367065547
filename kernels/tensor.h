#pragma once
// Non-owning tensor views and the owning host buffer. Views carry dtype and shape so
// every backend op can check its arguments at entry.
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace mics {

enum class DType : uint8_t { f32, f64, bf16, f16 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

// Raised when an op is called with arguments that do not fit together.
struct ShapeError : std::logic_error {
  using std::logic_error::logic_error;
};

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

inline constexpr int kMaxRank = 4;

struct Shape {
  std::array<int64_t, kMaxRank> dims{};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> list);
  int64_t numel() const;
  int64_t operator[](int i) const { return dims[static_cast<size_t>(i)]; }
  bool operator==(const Shape& other) const;
  std::string str() const;  // "[4, 7, 13]"
};

// A view of contiguous memory. It never owns; lifetime is the caller's business.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Shape shape;

  Tensor() = default;
  Tensor(void* data_, DType dtype_, Shape shape_) : data(data_), dtype(dtype_), shape(shape_) {}
  template <class T>
  Tensor(T* data_, Shape shape_) : data(data_), dtype(dtype_of<T>()), shape(shape_) {}

  bool empty() const { return data == nullptr; }
  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }

  template <class T> T* ptr() const {
    if (dtype != dtype_of<T>()) throw ShapeError(std::string("tensor holds ") + dtype_name(dtype));
    return static_cast<T*>(data);
  }
  // Elements [offset, offset + shape.numel()) of this view, reshaped.
  Tensor slice(int64_t offset, Shape new_shape) const;
  Tensor reshaped(Shape new_shape) const;
};

// Integer views (token ids, labels) are plain spans in host memory on the CPU backend
// and device pointers on CUDA; they are typed separately from float tensors.
struct IntTensor {
  int32_t* data = nullptr;
  Shape shape;
  int64_t numel() const { return shape.numel(); }
};

// Checks used at op entry: throw ShapeError with the op and argument named.
void expect_shape(const char* op, const char* arg, const Tensor& t, Shape shape);
void expect_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void expect_rank(const char* op, const char* arg, const Tensor& t, int rank);
void expect_numel(const char* op, const char* arg, const Tensor& t, int64_t n);
inline int64_t dim(const Tensor& t, int i) { return t.shape[i]; }

}  // namespace mics
