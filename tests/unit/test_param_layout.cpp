// The flat parameter layout's initial values: every partition size starts from the same
// model, padding or not (README: every (N, p, k) gives the same losses).
#include <gtest/gtest.h>

#include <vector>

#include "model/model.h"
#include "model/param_layout.h"

namespace {

using namespace mics;
using model::Arch;
using model::ModelSpec;

// Sizes that are no multiple of 64 or 128, so the layers' padding differs with p.
ModelSpec odd_spec(Arch arch) {
  ModelSpec s;
  s.arch = arch;
  s.hidden = 30;
  s.layers = 2;
  s.heads = 3;
  s.ffn = 77;
  s.vocab = 257;
  s.max_positions = 13;
  s.type_vocab = arch == Arch::bert ? 2 : 0;
  return s;
}

std::vector<float> initial_values(const model::ParamLayout& layout) {
  std::vector<float> flat(static_cast<size_t>(layout.total_elements()));
  model::init_parameters(layout, 1234, 0, layout.total_elements(), flat.data());
  return flat;
}

class InitialValues : public ::testing::TestWithParam<Arch> {};

TEST_P(InitialValues, AreTheSameTensorByTensorForEveryPartitionSize) {
  const ModelSpec spec = odd_spec(GetParam());
  const model::ParamLayout one = model::build_layout(spec, model::shard_multiple_for(1));
  const std::vector<float> reference = initial_values(one);
  for (const int64_t p : {2, 3, 5, 6, 8, 12, 24}) {
    SCOPED_TRACE("p = " + std::to_string(p));
    const model::ParamLayout layout = model::build_layout(spec, model::shard_multiple_for(p));
    const std::vector<float> flat = initial_values(layout);
    ASSERT_EQ(layout.tensors().size(), one.tensors().size());
    int64_t differing = 0;
    for (size_t k = 0; k < one.tensors().size(); ++k) {
      const model::ParamTensor& a = one.tensors()[k];
      const model::ParamTensor& b = layout.tensors()[k];
      ASSERT_EQ(a.name, b.name);
      for (int64_t i = 0; i < a.numel(); ++i)
        differing += reference[static_cast<size_t>(a.offset + i)] != flat[static_cast<size_t>(b.offset + i)];
    }
    EXPECT_EQ(differing, 0);
  }
}

TEST_P(InitialValues, DrawByOffsetAtPOne) {
  // p = 1's layout draws by flat offset, as every layout did before p's padding was taken
  // out of the draws: checkpoints' and logs' seeds keep their meaning.
  const model::ParamLayout one = model::build_layout(odd_spec(GetParam()), model::shard_multiple_for(1));
  for (const model::ParamTensor& t : one.tensors()) EXPECT_EQ(t.draw_offset, t.offset) << t.name;
  // ... and a padded layout does not (the test above would then be vacuous).
  const model::ParamLayout three = model::build_layout(odd_spec(GetParam()), model::shard_multiple_for(3));
  EXPECT_NE(three.tensors().back().draw_offset, three.tensors().back().offset);
}

INSTANTIATE_TEST_SUITE_P(Models, InitialValues, ::testing::Values(Arch::bert, Arch::gpt),
                         [](const auto& info) { return info.param == Arch::bert ? "bert" : "gpt"; });

}  // namespace
