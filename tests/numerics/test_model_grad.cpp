// Whole-model gradient check: BERT and GPT run in float64 on the CPU backend, and the
// hand-written backward of every parameter tensor is compared with central finite
// differences of the forward.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <random>
#include <vector>

#include "engine/op_profile.h"
#include "kernels/ops.h"
#include "model/model.h"

namespace {

using namespace mics;
using model::Arch;
using model::ModelSpec;

// Parameters and gradients in host float64, the whole model "gathered". With `fresh`, each
// layer's gradient buffer is handed out fresh the first time, its parameter entries NaN
// (what a store that does not zero leaves there), the gaps between tensors zero.
class HostProvider final : public model::ParamProvider {
 public:
  explicit HostProvider(const model::ParamLayout& layout)
      : params(static_cast<size_t>(layout.total_elements())), grads(params.size(), 0.0),
        layout_(layout), handed_out_(static_cast<size_t>(layout.num_layers()), false) {}
  Tensor acquire_params(int layer) override { return span(params, layer); }
  void release_params(int) override {}
  model::GradBuffer grad_buffer(int layer) override {
    const bool first = fresh && !handed_out_[static_cast<size_t>(layer)];
    handed_out_[static_cast<size_t>(layer)] = true;
    if (first)
      for (const model::ParamTensor& t : layout_.tensors())
        if (t.layer == layer) std::fill_n(grads.begin() + t.offset, t.numel(), std::nan(""));
    return {span(grads, layer), first};
  }
  void grads_ready(int) override {}

  std::vector<double> params, grads;
  bool fresh = false;

 private:
  Tensor span(std::vector<double>& v, int layer) {
    const model::LayerSpan& s = layout_.layers()[static_cast<size_t>(layer)];
    return Tensor(v.data() + s.begin, Shape{s.size});
  }
  const model::ParamLayout& layout_;
  std::vector<bool> handed_out_;
};

ModelSpec tiny_spec(Arch arch, float dropout) {
  ModelSpec s;
  s.arch = arch;
  s.hidden = 12;
  s.layers = 2;
  s.heads = 3;
  s.ffn = 20;
  s.vocab = 17;
  s.max_positions = 7;
  s.type_vocab = arch == Arch::bert ? 2 : 0;
  s.layernorm_eps = arch == Arch::bert ? 1e-12 : 1e-5;
  s.dropout = dropout;
  s.attention_dropout = dropout;
  return s;
}

struct Case {
  Arch arch;
  float dropout;
  const char* name;
  bool fused_attention = false;
};

class ModelGradient : public ::testing::TestWithParam<Case> {};

TEST_P(ModelGradient, EveryParameterMatchesFiniteDifferences) {
  const Case c = GetParam();
  const int64_t B = 2, T = 5;
  auto backend = make_cpu_backend();
  ModelSpec spec = tiny_spec(c.arch, c.dropout);
  spec.fused_attention = c.fused_attention;
  auto net = model::make_model(spec, *backend, DType::f64, B, T, 128);
  const model::ParamLayout& layout = net->layout();
  HostProvider store(layout);

  // Random parameters of order one (LayerNorm gains around 1), so no gradient vanishes.
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 0.4);
  for (const model::ParamTensor& t : layout.tensors())
    for (int64_t i = 0; i < t.numel(); ++i)
      store.params[static_cast<size_t>(t.offset + i)] = (t.init == model::Init::ones ? 1.0 : 0.0) + normal(rng);

  // Tokens and labels: next-token for GPT; for BERT a few masked positions.
  std::vector<int32_t> tokens(B * T), labels(B * T, -100);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(spec.vocab) - 2);
  for (auto& x : tokens) x = tok(rng);
  if (c.arch == Arch::gpt) {
    for (int64_t i = 0; i < B * T; ++i) labels[i] = tok(rng);
    labels[3] = -100;  // an ignored position too
  } else {
    for (int64_t i : {1, 4, 6, 7}) {
      labels[i] = tokens[i];
      tokens[i] = static_cast<int32_t>(spec.vocab) - 1;  // [MASK]
    }
  }
  const model::TokenBatch batch{tokens.data(), labels.data(), B, T};
  const uint64_t seed = 99;
  const double grad_scale = 0.75;  // the gradient must carry the scale too

  net->forward(store, batch, seed, grad_scale);
  net->backward(store);
  const std::vector<double> analytic = store.grads;

  auto loss_at = [&] { return grad_scale * net->forward(store, batch, seed, 0.0); };
  const double h = 1e-5;
  int checked = 0;
  for (const model::ParamTensor& t : layout.tensors()) {
    double worst = 0;
    int64_t worst_i = -1;
    for (int64_t i = 0; i < t.numel(); ++i) {
      double& p = store.params[static_cast<size_t>(t.offset + i)];
      const double saved = p;
      p = saved + h;
      const double up = loss_at();
      p = saved - h;
      const double down = loss_at();
      p = saved;
      const double fd = (up - down) / (2 * h);
      const double g = analytic[static_cast<size_t>(t.offset + i)];
      // FD error: truncation O(h^2 f''') ~ 1e-10 relative, rounding eps*|L|/h ~ 1e-11
      // absolute. Key biases have an exact zero gradient (softmax is shift invariant),
      // so the absolute floor matters: |g - fd| <= 1e-9 + 1e-6 |fd|.
      const double err = std::abs(g - fd) / (1e-9 + 1e-6 * std::abs(fd));
      if (err > worst) {
        worst = err;
        worst_i = i;
      }
      ++checked;
    }
    EXPECT_LE(worst, 1.0) << c.name << ": " << t.name << " element " << worst_i;
  }
  EXPECT_EQ(checked, layout.parameter_count());
  // Padding between tensors must stay untouched.
  double padding = 0;
  std::vector<bool> is_param(analytic.size(), false);
  for (const model::ParamTensor& t : layout.tensors())
    for (int64_t i = 0; i < t.numel(); ++i) is_param[static_cast<size_t>(t.offset + i)] = true;
  for (size_t i = 0; i < analytic.size(); ++i)
    if (!is_param[i]) padding += std::abs(analytic[i]);
  EXPECT_EQ(padding, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, ModelGradient,
    ::testing::Values(Case{Arch::gpt, 0.0f, "gpt"}, Case{Arch::bert, 0.0f, "bert"},
                      Case{Arch::gpt, 0.2f, "gpt_dropout"}, Case{Arch::bert, 0.2f, "bert_dropout"},
                      Case{Arch::gpt, 0.2f, "gpt_dropout_fused_attention", true},
                      Case{Arch::bert, 0.0f, "bert_fused_attention", true}),
    [](const auto& info) { return std::string(info.param.name); });

// Gradients of two micro-batches accumulate: backward adds, it never overwrites.
TEST(ModelGradient, MicroBatchesAccumulate) {
  const int64_t B = 2, T = 5;
  auto backend = make_cpu_backend();
  const ModelSpec spec = tiny_spec(Arch::gpt, 0.0f);
  auto net = model::make_model(spec, *backend, DType::f64, B, T, 128);
  HostProvider store(net->layout());
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (auto& p : store.params) p = normal(rng);
  std::vector<int32_t> tokens(B * T), labels(B * T);
  for (int64_t i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<int32_t>(i % spec.vocab);
    labels[i] = static_cast<int32_t>((3 * i + 1) % spec.vocab);
  }
  const model::TokenBatch batch{tokens.data(), labels.data(), B, T};
  net->forward(store, batch, 1, 1.0);
  net->backward(store);
  const std::vector<double> once = store.grads;
  net->forward(store, batch, 1, 1.0);
  net->backward(store);
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(store.grads[i], 2 * once[i], 1e-12 * (1 + std::abs(once[i])));
}

// A store that hands out fresh (unzeroed) gradient buffers, as ShardedParamStore does for a
// step's first micro-step with gradients in place: every parameter's gradient is written
// over the stale values, bit for bit what a zeroed buffer accumulates, and the gaps between
// tensors stay zero. With no label to learn from too (BERT's head, GPT's whole model then
// get no gradient), with activation checkpointing, with dropout and with fused attention.
TEST(ModelGradient, FreshBuffersAreWrittenOverLikeZeroedOnes) {
  const int64_t B = 2, T = 5;
  auto backend = make_cpu_backend();
  for (Arch arch : {Arch::gpt, Arch::bert})
    for (bool masked : {true, false})
      for (int variant = 0; variant < 3; ++variant) {
        SCOPED_TRACE(testing::Message() << (arch == Arch::gpt ? "gpt" : "bert") << (masked ? "" : " no masked token")
                                        << " variant " << variant);
        ModelSpec spec = tiny_spec(arch, variant == 1 ? 0.2f : 0.0f);
        spec.activation_checkpointing = variant == 1;
        spec.fused_attention = variant == 2;
        auto net = model::make_model(spec, *backend, DType::f64, B, T, 128);
        HostProvider zeroed(net->layout()), fresh(net->layout());
        fresh.fresh = true;
        std::mt19937_64 rng(17);
        std::normal_distribution<double> normal(0.0, 0.4);
        for (auto& p : zeroed.params) p = normal(rng);
        fresh.params = zeroed.params;
        std::vector<int32_t> tokens(B * T), labels(B * T, -100);
        for (int64_t i = 0; i < B * T; ++i) {
          tokens[i] = static_cast<int32_t>((5 * i + 2) % (spec.vocab - 1));
          if (masked && (arch == Arch::gpt || i % 3 == 1)) labels[i] = static_cast<int32_t>((7 * i + 1) % spec.vocab);
        }
        const model::TokenBatch batch{tokens.data(), labels.data(), B, T};
        net->forward(zeroed, batch, 3, 0.5);
        net->backward(zeroed);
        net->forward(fresh, batch, 3, 0.5);
        net->backward(fresh);
        size_t differ = 0, first = 0;
        for (size_t i = 0; i < zeroed.grads.size(); ++i)
          if (!(fresh.grads[i] == zeroed.grads[i]) && differ++ == 0) first = i;  // NaN left behind differs
        EXPECT_EQ(differ, 0u) << "first at flat index " << first << ": " << fresh.grads[first] << " vs "
                              << zeroed.grads[first];
      }
}

// Activation checkpointing recomputes each block from its saved input with the same ops
// and dropout seeds: loss and every gradient are bit-identical to keeping all activations,
// in fewer activation bytes. Post-LN (BERT) with train.keep_ffn_output, each block's second
// LayerNorm input is kept too (more bytes than without, fewer than keeping everything).
// Also with the fused attention (each row's log-sum-exp kept instead of the probabilities),
// what runs on GPUs.
struct CheckpointCase {
  Arch arch;
  bool keep_ffn_output;
  bool fused_attention;
  const char* name;
};
const CheckpointCase kCheckpointCases[] = {{Arch::gpt, false, false, "gpt"},
                                           {Arch::bert, false, false, "bert"},
                                           {Arch::bert, true, false, "bert, FFN output kept"},
                                           {Arch::gpt, false, true, "gpt, fused attention"},
                                           {Arch::bert, true, true, "bert, FFN output kept, fused attention"}};

TEST(ModelGradient, ActivationCheckpointingChangesNothingButMemory) {
  const int64_t B = 2, T = 7;
  auto backend = make_cpu_backend();
  for (const CheckpointCase& c : kCheckpointCases) {
    SCOPED_TRACE(c.name);
    ModelSpec spec = tiny_spec(c.arch, 0.2f);
    spec.layers = 3;
    spec.fused_attention = c.fused_attention;
    auto kept = model::make_model(spec, *backend, DType::f64, B, T, 128);
    spec.activation_checkpointing = true;
    auto plain = model::make_model(spec, *backend, DType::f64, B, T, 128);
    spec.keep_ffn_output = c.keep_ffn_output;
    auto recomputed = model::make_model(spec, *backend, DType::f64, B, T, 128);
    EXPECT_LT(recomputed->activation_bytes(), kept->activation_bytes());
    if (c.keep_ffn_output) EXPECT_GT(recomputed->activation_bytes(), plain->activation_bytes());
    HostProvider a(kept->layout()), b(recomputed->layout());
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal(0.0, 0.3);
    for (auto& p : a.params) p = normal(rng);
    b.params = a.params;
    std::vector<int32_t> tokens(B * T), labels(B * T);
    for (int64_t i = 0; i < B * T; ++i) {
      tokens[i] = static_cast<int32_t>((5 * i + 2) % (spec.vocab - 1));
      labels[i] = i % 3 == 0 ? static_cast<int32_t>((7 * i + 1) % spec.vocab) : -1;
    }
    const model::TokenBatch batch{tokens.data(), labels.data(), B, T};
    const double loss_a = kept->forward(a, batch, 11, 1.0);
    kept->backward(a);
    const double loss_b = recomputed->forward(b, batch, 11, 1.0);
    recomputed->backward(b);
    EXPECT_EQ(loss_a, loss_b);
    size_t nonzero = 0;
    for (size_t i = 0; i < a.grads.size(); ++i) {
      ASSERT_EQ(a.grads[i], b.grads[i]) << "element " << i;
      nonzero += a.grads[i] != 0.0;
    }
    EXPECT_GT(nonzero, a.grads.size() / 2);
  }
}

// What the recompute runs again: each block's QKV and projection products and its FFN's
// first product (with the GELU); the FFN's second product only post-LN without its output
// kept (a GPT block's backward never reads that product's output).
TEST(ModelGradient, ActivationCheckpointingRecomputesTheFfnsSecondProductOnlyWhereNeeded) {
  const int64_t B = 2, T = 7;
  for (const CheckpointCase& c : kCheckpointCases) {
    SCOPED_TRACE(c.name);
    ModelSpec spec = tiny_spec(c.arch, 0.2f);
    spec.layers = 3;
    spec.fused_attention = c.fused_attention;
    std::map<std::string, int64_t> calls[2];
    for (int recompute = 0; recompute < 2; ++recompute) {
      spec.activation_checkpointing = recompute == 1;
      spec.keep_ffn_output = recompute == 1 && c.keep_ffn_output;
      OpProfile profile;
      auto backend = make_profiling_backend(make_cpu_backend(), profile);
      auto m = model::make_model(spec, *backend, DType::f64, B, T, 128);
      HostProvider p(m->layout());
      std::mt19937_64 rng(5);
      std::normal_distribution<double> normal(0.0, 0.3);
      for (auto& x : p.params) x = normal(rng);
      std::vector<int32_t> tokens(B * T), labels(B * T);
      for (int64_t i = 0; i < B * T; ++i) {
        tokens[i] = static_cast<int32_t>((5 * i + 2) % (spec.vocab - 1));
        labels[i] = static_cast<int32_t>((7 * i + 1) % spec.vocab);
      }
      (void)m->forward(p, model::TokenBatch{tokens.data(), labels.data(), B, T}, 11, 1.0);
      m->backward(p);
      profile.settle();
      for (const auto& [op, entry] : profile.entries()) calls[recompute][op] = entry.calls;
    }
    const int64_t layers = spec.layers;
    const bool whole = c.arch == Arch::bert && !c.keep_ffn_output;
    EXPECT_EQ(calls[1]["linear_forward"], calls[0]["linear_forward"] + (whole ? 3 : 2) * layers)
        << "QKV and projection" << (whole ? " and the FFN's second product" : ", not the FFN's second product");
    EXPECT_EQ(calls[1]["linear_gelu_forward"], calls[0]["linear_gelu_forward"] + layers);
    EXPECT_EQ(calls[1]["linear_backward"], calls[0]["linear_backward"]);
  }
}

}  // namespace
