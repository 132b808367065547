#include "engine/hf_interchange.h"

#include <stdexcept>

namespace mics {

namespace {

enum class Op { copy, transpose, part };  // part: rows [k*n/3, (k+1)*n/3) of a fused qkv

struct Link {
  std::string ours, hf;
  Op op = Op::copy;
  int part = 0;
};

// The HF name(s) of each of our tensors.
std::vector<Link> links(const model::ModelSpec& s) {
  std::vector<Link> out;
  const bool bert = s.arch == model::Arch::bert;
  if (bert) {
    out.push_back({"embed.tokens", "bert.embeddings.word_embeddings.weight"});
    out.push_back({"embed.positions", "bert.embeddings.position_embeddings.weight"});
    out.push_back({"embed.token_types", "bert.embeddings.token_type_embeddings.weight"});
    out.push_back({"embed.norm.weight", "bert.embeddings.LayerNorm.weight"});
    out.push_back({"embed.norm.bias", "bert.embeddings.LayerNorm.bias"});
  } else {
    out.push_back({"embed.tokens", "transformer.wte.weight"});
    out.push_back({"embed.positions", "transformer.wpe.weight"});
  }
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string o = "layers." + std::to_string(l) + ".";
    if (bert) {
      const std::string h = "bert.encoder.layer." + std::to_string(l) + ".";
      const char* qkv[3] = {"query", "key", "value"};
      for (int k = 0; k < 3; ++k) {
        out.push_back({o + "qkv.weight", h + "attention.self." + qkv[k] + ".weight", Op::part, k});
        out.push_back({o + "qkv.bias", h + "attention.self." + qkv[k] + ".bias", Op::part, k});
      }
      for (const char* w : {"weight", "bias"}) {
        out.push_back({o + "proj." + w, h + "attention.output.dense." + w});
        out.push_back({o + "norm1." + w, h + "attention.output.LayerNorm." + w});
        out.push_back({o + "fc." + w, h + "intermediate.dense." + w});
        out.push_back({o + "fc2." + w, h + "output.dense." + w});
        out.push_back({o + "norm2." + w, h + "output.LayerNorm." + w});
      }
    } else {
      const std::string h = "transformer.h." + std::to_string(l) + ".";
      out.push_back({o + "norm1.weight", h + "ln_1.weight"});
      out.push_back({o + "norm1.bias", h + "ln_1.bias"});
      out.push_back({o + "qkv.weight", h + "attn.c_attn.weight", Op::transpose});
      out.push_back({o + "qkv.bias", h + "attn.c_attn.bias"});
      out.push_back({o + "proj.weight", h + "attn.c_proj.weight", Op::transpose});
      out.push_back({o + "proj.bias", h + "attn.c_proj.bias"});
      out.push_back({o + "norm2.weight", h + "ln_2.weight"});
      out.push_back({o + "norm2.bias", h + "ln_2.bias"});
      out.push_back({o + "fc.weight", h + "mlp.c_fc.weight", Op::transpose});
      out.push_back({o + "fc.bias", h + "mlp.c_fc.bias"});
      out.push_back({o + "fc2.weight", h + "mlp.c_proj.weight", Op::transpose});
      out.push_back({o + "fc2.bias", h + "mlp.c_proj.bias"});
    }
  }
  if (bert) {
    out.push_back({"mlm.transform.weight", "cls.predictions.transform.dense.weight"});
    out.push_back({"mlm.transform.bias", "cls.predictions.transform.dense.bias"});
    out.push_back({"mlm.norm.weight", "cls.predictions.transform.LayerNorm.weight"});
    out.push_back({"mlm.norm.bias", "cls.predictions.transform.LayerNorm.bias"});
    out.push_back({"mlm.decoder_bias", "cls.predictions.bias"});
  } else {
    out.push_back({"final_norm.weight", "transformer.ln_f.weight"});
    out.push_back({"final_norm.bias", "transformer.ln_f.bias"});
  }
  return out;
}

// Shape of the HF tensor for our tensor `shape` under `link`.
std::vector<int64_t> hf_shape(const std::vector<int64_t>& shape, const Link& link) {
  if (link.op == Op::transpose) return {shape[1], shape[0]};
  if (link.op == Op::part) {
    std::vector<int64_t> s = shape;
    s[0] /= 3;
    return s;
  }
  return shape;
}

// Element (ours) index -> element (hf) index mapping applied to whole tensors.
void convert(const std::vector<int64_t>& shape, const Link& link, const float* from, float* to, bool to_hf) {
  if (link.op == Op::copy) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::copy_n(from, n, to);
  } else if (link.op == Op::transpose) {  // ours [r, c] <-> hf [c, r]
    const int64_t r = shape[0], c = shape[1];
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) {
        if (to_hf) to[j * r + i] = from[i * c + j];
        else to[i * c + j] = from[j * r + i];
      }
  } else {  // rows of the fused qkv
    int64_t row = 1;
    for (size_t d = 1; d < shape.size(); ++d) row *= shape[d];
    const int64_t n = shape[0] / 3 * row, first = link.part * n;
    if (to_hf) std::copy_n(from + first, n, to);
    else std::copy_n(from, n, to + first);
  }
}

}  // namespace

std::set<std::string> hf_ignored_names(const model::ModelSpec& s) {
  std::set<std::string> names;
  if (s.arch == model::Arch::bert) {
    names = {"bert.embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"};
  } else {
    names = {"lm_head.weight"};
    for (int64_t l = 0; l < s.layers; ++l) {
      names.insert("transformer.h." + std::to_string(l) + ".attn.bias");
      names.insert("transformer.h." + std::to_string(l) + ".attn.masked_bias");
    }
  }
  return names;
}

TensorFile to_hf(const model::ModelSpec& spec, const std::vector<NamedWeights>& ours) {
  std::map<std::string, const NamedWeights*> by_name;
  for (const NamedWeights& w : ours) by_name[w.name] = &w;
  TensorFile out;
  for (const Link& link : links(spec)) {
    const auto it = by_name.find(link.ours);
    if (it == by_name.end()) throw std::runtime_error("the checkpoint has no tensor " + link.ours + ".");
    StoredTensor t;
    t.shape = hf_shape(it->second->shape, link);
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    t.values.resize(static_cast<size_t>(n));
    convert(it->second->shape, link, it->second->values.data(), t.values.data(), true);
    out.emplace(link.hf, std::move(t));
  }
  return out;
}

std::map<std::string, std::vector<float>> from_hf(const model::ModelSpec& spec,
                                                  const model::ParamLayout& layout,
                                                  const TensorFile& file, const std::string& path) {
  std::map<std::string, std::vector<float>> ours;
  std::set<std::string> used;
  for (const Link& link : links(spec)) {
    const model::ParamTensor& t = layout.at(link.ours);
    const std::vector<int64_t> shape(t.shape.dims.begin(), t.shape.dims.begin() + t.shape.rank);
    const auto it = file.find(link.hf);
    if (it == file.end()) throw SafetensorsError(path + " has no tensor '" + link.hf + "'.");
    if (it->second.shape != hf_shape(shape, link)) {
      std::string want, got;
      for (int64_t d : hf_shape(shape, link)) want += (want.empty() ? "" : ", ") + std::to_string(d);
      for (int64_t d : it->second.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
      throw SafetensorsError(path + ": tensor '" + link.hf + "' is [" + got + "]; this model needs [" + want + "].");
    }
    auto& values = ours[link.ours];
    values.resize(static_cast<size_t>(t.numel()));
    convert(shape, link, it->second.values.data(), values.data(), false);
    used.insert(link.hf);
  }
  for (const auto& [name, t] : file)
    if (!used.count(name))
      throw SafetensorsError(path + " holds tensor '" + name + "', which this " +
                             (spec.arch == model::Arch::bert ? "BERT" : "GPT") + " model does not have.");
  return ours;
}

nlohmann::json hf_config(const model::ModelSpec& s) {
  if (s.arch == model::Arch::bert)
    return {{"architectures", {"BertForMaskedLM"}}, {"model_type", "bert"}, {"vocab_size", s.vocab},
            {"hidden_size", s.hidden}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
            {"intermediate_size", s.ffn}, {"hidden_act", "gelu"}, {"max_position_embeddings", s.max_positions},
            {"type_vocab_size", s.type_vocab}, {"layer_norm_eps", s.layernorm_eps},
            {"hidden_dropout_prob", s.dropout}, {"attention_probs_dropout_prob", s.attention_dropout},
            {"initializer_range", s.init_std}, {"torch_dtype", "float32"}};
  return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", s.vocab},
          {"n_embd", s.hidden}, {"n_layer", s.layers}, {"n_head", s.heads}, {"n_inner", s.ffn},
          {"n_positions", s.max_positions}, {"activation_function", "gelu_new"},
          {"layer_norm_epsilon", s.layernorm_eps}, {"resid_pdrop", s.dropout}, {"embd_pdrop", s.dropout},
          {"attn_pdrop", s.attention_dropout}, {"initializer_range", s.init_std}, {"tie_word_embeddings", true},
          {"torch_dtype", "float32"}};
}

}  // namespace mics
