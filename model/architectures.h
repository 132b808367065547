#pragma once
// Entry points of the two architectures; model_factory.cpp dispatches on ModelSpec::arch.
#include <memory>

#include "model/model.h"

namespace mics::model {

ParamLayout gpt_layout(const ModelSpec& spec, int64_t shard_multiple);
ParamLayout bert_layout(const ModelSpec& spec, int64_t shard_multiple);
std::unique_ptr<Model> make_gpt(const ModelSpec& spec, Backend& backend, DType dtype,
                                int64_t batch, int64_t seq, int64_t shard_multiple);
std::unique_ptr<Model> make_bert(const ModelSpec& spec, Backend& backend, DType dtype,
                                 int64_t batch, int64_t seq, int64_t shard_multiple);

}  // namespace mics::model
