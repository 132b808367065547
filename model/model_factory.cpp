#include "model/architectures.h"

namespace mics::model {

ParamLayout build_layout(const ModelSpec& spec, int64_t shard_multiple) {
  return spec.arch == Arch::bert ? bert_layout(spec, shard_multiple)
                                 : gpt_layout(spec, shard_multiple);
}

namespace {

// The largest op shapes of a step of this model (BERT's head takes at most every row).
ScratchBounds scratch_bounds(const ModelSpec& s, DType dtype, int64_t batch, int64_t seq) {
  const int64_t C = s.hidden, F = s.ffn;
  ScratchBounds b;
  b.dtype = dtype;
  b.rows = batch * seq;
  b.linears = {{3 * C, C}, {C, C}, {F, C}, {C, F}, {s.vocab, C}};  // blocks, then the vocabulary projection
  b.layernorm_width = C;
  if (s.fused_attention) b.fused_attention = AttentionDims{batch, seq, s.heads, C / s.heads, s.arch == Arch::gpt};
  return b;
}

}  // namespace

std::unique_ptr<Model> make_model(const ModelSpec& spec, Backend& backend, DType dtype,
                                  int64_t batch, int64_t seq, int64_t shard_multiple) {
  if (!backend.supports(dtype))
    throw std::invalid_argument(std::string("backend ") + backend.name() + " cannot compute in " +
                                dtype_name(dtype));
  std::unique_ptr<Model> model = spec.arch == Arch::bert ? make_bert(spec, backend, dtype, batch, seq, shard_multiple)
                                                         : make_gpt(spec, backend, dtype, batch, seq, shard_multiple);
  backend.reserve_scratch(scratch_bounds(spec, dtype, batch, seq));
  return model;
}

}  // namespace mics::model
