#pragma once
// Weights in Hugging Face's names and layouts: BERT as BertForMaskedLM, GPT as
// GPT2LMHeadModel. Our fused qkv splits into BERT's query/key/value; GPT-2's Conv1D stores
// [in, out], our linear layers [out, in]. Tied weights (decoder, lm_head) are not stored;
// read, they must equal what they are tied to, as our model has one tensor for both.
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
// its shape; a tied copy (lm_head.weight, cls.predictions.decoder.*) must be bit-equal to
// the tensor it is tied to; anything else but known buffers is an error naming it.
std::map<std::string, std::vector<float>> from_hf(const model::ModelSpec& spec,
                                                  const model::ParamLayout& layout,
                                                  const TensorFile& file, const std::string& path);
// Buffers other tools store that we neither need nor reject (not loaded, any dtype).
std::set<std::string> hf_ignored_names(const model::ModelSpec& spec);
// config.json of the Hugging Face architecture for `spec`.
nlohmann::json hf_config(const model::ModelSpec& spec);
// hf_config(spec) written to `path` through a temporary file (write_file_replacing).
void write_hf_config(const std::string& path, const model::ModelSpec& spec);
// The Hugging Face config.json at `path` against the model `spec` describes: a ConfigError
// naming the key, its value and ours where it describes a different model (keys left out
// stand for transformers' defaults, as from_pretrained reads them), or where the file is
// not a config.json. Returns warnings about settings that change nothing we compute.
// `beside_file`: found beside a weight file (not in the folder given), where a config.json
// without a model_type is someone else's (a mics-train config, say): a warning, unchecked.
std::vector<std::string> check_hf_config(const model::ModelSpec& spec, const std::string& path, bool beside_file);

}  // namespace mics
