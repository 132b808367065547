#pragma once
// Weights in Hugging Face's names and layouts: BERT as BertForMaskedLM, GPT as
// GPT2LMHeadModel. Our fused qkv splits into BERT's query/key/value; GPT-2's Conv1D stores
// [in, out], our linear layers [out, in]. Tied weights (decoder, lm_head) are not stored.
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/checkpoint.h"
#include "engine/safetensors.h"
#include "model/model_spec.h"
#include "model/param_layout.h"

namespace mics {

// Our tensors (layout order) -> the Hugging Face tensors.
TensorFile to_hf(const model::ModelSpec& spec, const std::vector<NamedWeights>& ours);
// A Hugging Face file -> our tensors by name. Every expected tensor must be present with
// its shape; anything else but known buffers and tied copies is an error naming it.
std::map<std::string, std::vector<float>> from_hf(const model::ModelSpec& spec,
                                                  const model::ParamLayout& layout,
                                                  const TensorFile& file, const std::string& path);
// Names other tools store that we neither need nor reject.
std::set<std::string> hf_ignored_names(const model::ModelSpec& spec);
// config.json of the Hugging Face architecture for `spec`.
nlohmann::json hf_config(const model::ModelSpec& spec);

}  // namespace mics
