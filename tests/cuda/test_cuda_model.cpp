// Whole-model check of the CUDA backend: a small BERT and GPT (with and without dropout)
// run forward and backward on the device in fp32, bf16 and fp16, and the loss and every
// parameter tensor's gradient are compared with the CPU backend in float64 on the same
// (rounded) parameters, tokens and dropout seed. This is what the engine will do with
// make_model(spec, cuda_backend, dtype, ...): every op in model order, the gradient rule,
// the dropout masks and the device-side index tensors together.
//
// Tolerances are norm-wise per tensor, ||g - ref|| <= k * u * ||ref|| with u the dtype's
// unit roundoff: a model chains ~40 ops whose roundings add up (k = 64 leaves margin for
// that in half precision; fp32 gets k = 256 u32 ~ 1.5e-5: still ~1000x below an error
// from a wrong formula, which is O(1)). Worst ratios are printed for calibration.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "tests/cuda/host_dtype.h"

namespace mics {
namespace {

using model::Arch;
using model::ModelSpec;

#define MICS_REQUIRE_CUDA() \
  if (::mics::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device"

// The whole model "gathered": parameters and gradients as one span each, on the backend.
class SpanProvider final : public model::ParamProvider {
 public:
  SpanProvider(const model::ParamLayout& layout, Tensor params, Tensor grads)
      : layout_(layout), params_(params), grads_(grads) {}
  Tensor acquire_params(int layer) override { return span(params_, layer); }
  void release_params(int) override {}
  model::GradBuffer grad_buffer(int layer) override { return {span(grads_, layer), false}; }
  void grads_ready(int) override {}

 private:
  Tensor span(const Tensor& t, int layer) const {
    const model::LayerSpan& s = layout_.layers()[static_cast<size_t>(layer)];
    return t.slice(s.begin, Shape{s.size});
  }
  const model::ParamLayout& layout_;
  Tensor params_, grads_;
};

// cudnn: attention through cuDNN (runtime.attention "cudnn": fused, no attention dropout).
ModelSpec small_spec(Arch arch, float dropout, bool cudnn) {
  ModelSpec s;
  s.arch = arch;
  s.hidden = 48;
  s.layers = 2;
  s.heads = 3;
  s.ffn = 80;
  s.vocab = 67;
  s.max_positions = 16;
  s.type_vocab = arch == Arch::bert ? 2 : 0;
  s.layernorm_eps = arch == Arch::bert ? 1e-12 : 1e-5;
  s.dropout = dropout;
  s.attention_dropout = cudnn ? 0.0f : dropout;
  s.fused_attention = cudnn;
  return s;
}

struct Case {
  Arch arch;
  float dropout;
  DType dtype;
  bool cudnn = false;
};

class CudaModel : public ::testing::TestWithParam<Case> {};

TEST_P(CudaModel, LossAndEveryGradientMatchCpuFloat64) {
  MICS_REQUIRE_CUDA();
  const Case c = GetParam();
  const int64_t B = 2, T = 13;
  if (c.cudnn && cuda_compute_capability(0) < 80) GTEST_SKIP() << "cuDNN's fused attention needs compute capability 8.0";
  const ModelSpec spec = small_spec(c.arch, c.dropout, c.cudnn);
  auto cpu = make_cpu_backend();
  CudaBackendOptions options;
  options.cudnn_attention = c.cudnn;
  auto gpu = make_cuda_backend(0, options);
  auto ref_net = model::make_model(spec, *cpu, DType::f64, B, T, 128);
  auto net = model::make_model(spec, *gpu, c.dtype, B, T, 128);
  const model::ParamLayout& layout = ref_net->layout();
  const int64_t total = layout.total_elements();
  ASSERT_EQ(net->layout().total_elements(), total);

  // Parameters of order 0.1-1 (LayerNorm gains around 1), rounded to the dtype.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 0.3);
  Vec params(static_cast<size_t>(total), 0.0);
  for (const model::ParamTensor& t : layout.tensors())
    for (int64_t i = 0; i < t.numel(); ++i)
      params[static_cast<size_t>(t.offset + i)] = (t.init == model::Init::ones ? 1.0 : 0.0) + normal(rng);
  params = rounded(c.dtype, params);

  std::vector<int32_t> tokens(B * T), labels(B * T, -100);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(spec.vocab) - 2);
  for (auto& x : tokens) x = tok(rng);
  if (c.arch == Arch::gpt) {
    for (int64_t i = 0; i < B * T; ++i) labels[i] = tok(rng);
    labels[3] = -100;
  } else {
    for (int64_t i : {1, 4, 6, 7, 15, 20, 25}) {
      labels[i] = tokens[i];
      tokens[i] = static_cast<int32_t>(spec.vocab) - 1;
    }
  }
  const model::TokenBatch batch{tokens.data(), labels.data(), B, T};
  const uint64_t seed = 99;
  const double grad_scale = 0.75;

  // Reference: CPU, float64.
  Vec ref_params = params, ref_grads(params.size(), 0.0);
  SpanProvider ref_store(layout, Tensor(ref_params.data(), Shape{total}),
                         Tensor(ref_grads.data(), Shape{total}));
  const double ref_loss = ref_net->forward(ref_store, batch, seed, grad_scale);
  ref_net->backward(ref_store);

  // CUDA, in the dtype.
  DeviceBuffer d_params(*gpu, static_cast<size_t>(total) * dtype_size(c.dtype));
  DeviceBuffer d_grads(*gpu, static_cast<size_t>(total) * dtype_size(c.dtype));
  const std::vector<char> bytes = encode(c.dtype, params);
  gpu->copy_from_host(d_params.data(), bytes.data(), bytes.size());
  Tensor grads_t = d_grads.view(c.dtype, Shape{total});
  gpu->fill_zero(grads_t);
  SpanProvider store(layout, d_params.view(c.dtype, Shape{total}), grads_t);
  const double loss = net->forward(store, batch, seed, grad_scale);
  net->backward(store);
  gpu->synchronize();
  // make_model reserved every scratch buffer for these shapes (vocabulary 67: the padded
  // projection's staging included): no op allocated inside the step.
  EXPECT_EQ(cuda_scratch_growths(*gpu), 0);
  std::vector<char> out(bytes.size());
  gpu->copy_to_host(out.data(), d_grads.data(), out.size());
  const Vec grads = decode(c.dtype, out);

  const double u = c.dtype == DType::f32 ? 0x1p-24 : c.dtype == DType::bf16 ? 0x1p-8 : 0x1p-11;
  const double k = c.dtype == DType::f32 ? 256 : 64;
  const bool report = std::getenv("MICS_TOL_REPORT") != nullptr;
  EXPECT_LE(std::abs(loss - ref_loss), k * u * std::abs(ref_loss)) << "loss " << loss << " vs " << ref_loss;
  if (report)
    std::printf("  [tol] loss %.8g vs %.8g: %.3g of tolerance\n", loss, ref_loss,
                std::abs(loss - ref_loss) / (k * u * std::abs(ref_loss)));
  double worst = 0;
  std::string worst_name;
  for (const model::ParamTensor& t : layout.tensors()) {
    double diff2 = 0, ref2 = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double g = grads[static_cast<size_t>(t.offset + i)], r = ref_grads[static_cast<size_t>(t.offset + i)];
      diff2 += (g - r) * (g - r);
      ref2 += r * r;
    }
    const double ratio = std::sqrt(diff2) / (k * u * std::sqrt(ref2) + 1e-30);
    EXPECT_LE(ratio, 1.0) << t.name << ": ||g - ref|| = " << std::sqrt(diff2) << ", ||ref|| = " << std::sqrt(ref2);
    if (ratio > worst) worst = ratio, worst_name = t.name;
  }
  if (report) std::printf("  [tol] worst gradient: %s, %.3g of tolerance\n", worst_name.c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(
    Cuda, CudaModel,
    ::testing::Values(Case{Arch::bert, 0.0f, DType::f32}, Case{Arch::bert, 0.1f, DType::f32},
                      Case{Arch::gpt, 0.0f, DType::f32}, Case{Arch::gpt, 0.1f, DType::f32},
                      Case{Arch::bert, 0.1f, DType::bf16}, Case{Arch::gpt, 0.1f, DType::bf16},
                      Case{Arch::bert, 0.1f, DType::f16}, Case{Arch::gpt, 0.1f, DType::f16},
                      Case{Arch::bert, 0.1f, DType::bf16, true}, Case{Arch::gpt, 0.1f, DType::bf16, true},
                      Case{Arch::gpt, 0.0f, DType::f16, true}),
    [](const testing::TestParamInfo<Case>& info) {
      return std::string(info.param.arch == Arch::bert ? "bert" : "gpt") +
             (info.param.dropout > 0 ? "_dropout_" : "_") + dtype_name(info.param.dtype) +
             (info.param.cudnn ? "_cudnn_attention" : "");
    });

}  // namespace
}  // namespace mics
