#include "model/architectures.h"

namespace mics::model {

ParamLayout build_layout(const ModelSpec& spec, int64_t shard_multiple) {
  return spec.arch == Arch::bert ? bert_layout(spec, shard_multiple)
                                 : gpt_layout(spec, shard_multiple);
}

std::unique_ptr<Model> make_model(const ModelSpec& spec, Backend& backend, DType dtype,
                                  int64_t batch, int64_t seq, int64_t shard_multiple) {
  if (!backend.supports(dtype))
    throw std::invalid_argument(std::string("backend ") + backend.name() + " cannot compute in " +
                                dtype_name(dtype));
  return spec.arch == Arch::bert ? make_bert(spec, backend, dtype, batch, seq, shard_multiple)
                                 : make_gpt(spec, backend, dtype, batch, seq, shard_multiple);
}

}  // namespace mics::model
