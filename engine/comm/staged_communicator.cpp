#include "engine/comm/staged_communicator.h"

#include <vector>

namespace mics {

namespace {

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(std::unique_ptr<Communicator> host, Backend& device) : host_(std::move(host)), be_(device) {}
  ~StagedCommunicator() override {
    for (HostBuffer& b : host_buffers_) be_.release_host(b.data);
  }
  StagedCommunicator(const StagedCommunicator&) = delete;
  StagedCommunicator& operator=(const StagedCommunicator&) = delete;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }

  Request all_gather(void* base, DType dtype, size_t count, size_t blocks, size_t member_stride,
                     size_t block_stride) override {
    if (size() == 1 || blocks == 0 || count == 0) return nullptr;  // (every member has the same arguments)
    // The span from the first member's first chunk to the last member's last one.
    const size_t extent = (static_cast<size_t>(size()) - 1) * member_stride + (blocks - 1) * block_stride + count;
    const size_t bytes = extent * dtype_size(dtype);
    char* host = host_bytes(0, bytes);
    be_.copy_to_host(host, base, bytes);
    Request r = host_->all_gather(host, dtype, count, blocks, member_stride, block_stride);
    host_->wait(r);
    be_.copy_from_host(base, host, bytes);
    return nullptr;
  }

  Request reduce_scatter(const void* send, void* recv, DType dtype, size_t count) override {
    const size_t full = count * static_cast<size_t>(size());
    float* in = to_host_fp32(0, send, dtype, full);
    float* out = reinterpret_cast<float*>(host_bytes(1, count * sizeof(float)));
    Request r = host_->reduce_scatter(in, out, count);
    host_->wait(r);
    from_host_fp32(recv, dtype, out, count);
    return nullptr;
  }

  Request all_reduce(void* data, DType dtype, size_t count) override {
    if (size() == 1) return nullptr;
    float* values = to_host_fp32(0, data, dtype, count);
    Request r = host_->all_reduce(values, count);
    host_->wait(r);
    from_host_fp32(data, dtype, values, count);
    return nullptr;
  }

  // Collectives have completed when they return.
  void wait(Request& request) override { request.reset(); }
  bool test(Request& request) override {
    request.reset();
    return true;
  }
  double sum_scalar(double value) override { return host_->sum_scalar(value); }
  uint64_t first_member_value(uint64_t value) override { return host_->first_member_value(value); }

 private:
  // Staging buffers (the backend's host memory: page-locked on a GPU) grow to the largest
  // message on the first step and are reused after.
  struct HostBuffer {
    void* data = nullptr;
    size_t bytes = 0;
  };
  char* host_bytes(int which, size_t bytes) {
    HostBuffer& b = host_buffers_[which];
    if (b.bytes < bytes) {
      be_.release_host(b.data);
      b = HostBuffer{};
      b.data = be_.allocate_host(bytes);
      b.bytes = bytes;
    }
    return static_cast<char*>(b.data);
  }
  Tensor device_fp32(size_t count) {
    if (device32_.bytes() < count * sizeof(float)) device32_ = DeviceBuffer(be_, count * sizeof(float));
    return device32_.view(DType::f32, {static_cast<int64_t>(count)});
  }
  // `data[count]` of `dtype` on the device, as fp32 in host buffer `which`.
  float* to_host_fp32(int which, const void* data, DType dtype, size_t count) {
    float* host = reinterpret_cast<float*>(host_bytes(which, count * sizeof(float)));
    const void* source = data;
    if (dtype != DType::f32) {
      Tensor wide = device_fp32(count);
      be_.cast(wide, Tensor(const_cast<void*>(data), dtype, {static_cast<int64_t>(count)}));
      source = wide.data;
    }
    be_.copy_to_host(host, source, count * sizeof(float));
    return host;
  }
  void from_host_fp32(void* data, DType dtype, const float* host, size_t count) {
    if (dtype == DType::f32) {
      be_.copy_from_host(data, host, count * sizeof(float));
      return;
    }
    Tensor wide = device_fp32(count);
    be_.copy_from_host(wide.data, host, count * sizeof(float));
    be_.cast(Tensor(data, dtype, {static_cast<int64_t>(count)}), wide);
  }

  std::unique_ptr<Communicator> host_;
  Backend& be_;
  HostBuffer host_buffers_[2];
  DeviceBuffer device32_;
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host, Backend& device) {
  return std::make_unique<StagedCommunicator>(std::move(host), device);
}

}  // namespace mics
