#include "engine/hf_interchange.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "engine/config.h"
#include "engine/replace_file.h"

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

// Tensors Hugging Face ties to another (one parameter under two names) and may store
// anyway: {the copy, the tensor it is tied to, what that is}. Ours has one tensor for both,
// so a copy is taken only when it holds exactly the same values.
struct Tie {
  const char* copy;
  const char* of;
  const char* what;
};

std::vector<Tie> ties(const model::ModelSpec& s) {
  if (s.arch == model::Arch::bert)
    return {{"cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight", "the word embedding"},
            {"cls.predictions.decoder.bias", "cls.predictions.bias", "the prediction bias"}};
  return {{"lm_head.weight", "transformer.wte.weight", "the token embedding"}};
}

bool bit_equal(const StoredTensor& a, const StoredTensor& b) {
  return a.shape == b.shape && a.values.size() == b.values.size() &&
         std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0;
}

}  // namespace

std::set<std::string> hf_ignored_names(const model::ModelSpec& s) {
  std::set<std::string> names;
  if (s.arch == model::Arch::bert) {
    names = {"bert.embeddings.position_ids"};
  } else {
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
  for (const Tie& tie : ties(spec)) {
    const auto copy = file.find(tie.copy);
    if (copy == file.end()) continue;
    if (!bit_equal(copy->second, file.at(tie.of)))
      throw SafetensorsError(path + " holds '" + tie.copy + "', which differs from '" + tie.of +
                             "': mics-train ties the output head to " + tie.what + ", so an untied head cannot be loaded.");
    used.insert(tie.copy);
  }
  for (const auto& [name, t] : file)
    if (!used.count(name))
      throw SafetensorsError(path + " holds tensor '" + name + "', which this " +
                             (spec.arch == model::Arch::bert ? "BERT" : "GPT") + " model does not have.");
  return ours;
}

nlohmann::json hf_config(const model::ModelSpec& s) {
  // BERT's pad_token_id is left at transformers' default, 0, which every vocabulary holds.
  if (s.arch == model::Arch::bert)
    return {{"architectures", {"BertForMaskedLM"}}, {"model_type", "bert"}, {"vocab_size", s.vocab},
            {"hidden_size", s.hidden}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
            {"intermediate_size", s.ffn}, {"hidden_act", "gelu"}, {"max_position_embeddings", s.max_positions},
            {"type_vocab_size", s.type_vocab}, {"layer_norm_eps", s.layernorm_eps},
            {"hidden_dropout_prob", s.dropout}, {"attention_probs_dropout_prob", s.attention_dropout},
            {"initializer_range", s.init_std}, {"torch_dtype", "float32"}};
  // GPT-2's end-of-text id, 50256, where the vocabulary has it; else the last id, since
  // GPT2Config would fill a left-out id with 50256 and generate() would pad with an id the
  // embedding does not have. Our data carries no such token: this only keeps it in range.
  const int64_t end_of_text = s.vocab > 50256 ? 50256 : s.vocab - 1;
  return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", s.vocab},
          {"n_embd", s.hidden}, {"n_layer", s.layers}, {"n_head", s.heads}, {"n_inner", s.ffn},
          {"n_positions", s.max_positions}, {"activation_function", "gelu_new"},
          {"layer_norm_epsilon", s.layernorm_eps}, {"resid_pdrop", s.dropout}, {"embd_pdrop", s.dropout},
          {"attn_pdrop", s.attention_dropout}, {"initializer_range", s.init_std}, {"tie_word_embeddings", true},
          {"bos_token_id", end_of_text}, {"eos_token_id", end_of_text}, {"torch_dtype", "float32"}};
}

void write_hf_config(const std::string& path, const model::ModelSpec& spec) {
  const std::string text = hf_config(spec).dump(2) + "\n";
  write_file_replacing(path, [&](std::ostream& out) { out << text; });
}

std::vector<std::string> check_hf_config(const model::ModelSpec& s, const std::string& path, bool beside_file) {
  using nlohmann::json;
  json c;
  std::error_code ec;
  std::ifstream in(path);
  if (!std::filesystem::is_regular_file(path, ec) || !in) throw ConfigError("cannot read " + path + ".");
  try {
    c = json::parse(in);
  } catch (const json::parse_error& e) {
    throw ConfigError(path + " is not valid JSON (byte " + std::to_string(e.byte) + ").");
  }
  if (!c.is_object()) throw ConfigError(path + " is not a JSON object.");
  const bool bert = s.arch == model::Arch::bert;
  const std::string type = bert ? "bert" : "gpt2";
  // A config.json that transformers wrote always names its model_type; without one it is
  // some other file (a mics-train config, say) and says nothing about these weights.
  if (!c.contains("model_type") && beside_file)
    return {path + " has no 'model_type', so it is not a Hugging Face config.json; the weights are not checked "
                   "against it"};
  if (!c.contains("model_type"))
    throw ConfigError(path + " has no 'model_type', so it is not the Hugging Face config.json that --init-from "
                      "checks beside the weights.");
  if (c["model_type"] != type)
    throw ConfigError(path + ": 'model_type' is " + c["model_type"].dump() + "; this run trains " +
                      (bert ? "a BERT (model.type \"bert\")" : "a GPT (model.type \"gpt\"), whose model_type is \"gpt2\"") + ".");
  // A key left out means transformers' default, as from_pretrained would build the model.
  auto value = [&](const char* key, const json& fallback) { return c.contains(key) ? c[key] : fallback; };
  auto differs = [&](const char* key, const json& v, const std::string& our_key, const std::string& ours) {
    return ConfigError(path + ": '" + key + "' is " + v.dump() + "; this run's '" + our_key + "' is " + ours + ".");
  };
  auto same_int = [&](const char* key, int64_t fallback, int64_t ours, const char* our_key) {
    const json v = value(key, fallback);
    if (!v.is_number_integer() || v.get<int64_t>() != ours) throw differs(key, v, our_key, std::to_string(ours));
  };
  auto flag = [&](const char* key, bool fallback) {
    const json v = value(key, fallback);
    if (!v.is_boolean()) throw ConfigError(path + ": '" + key + "' is " + v.dump() + "; it must be true or false.");
    return v.get<bool>();
  };
  // Every key below changes what the model computes; the rest (dropout, which the run's
  // own config sets, initializer_range, token ids, tie_word_embeddings, which the weights
  // themselves answer for) do not.
  same_int("vocab_size", bert ? 30522 : 50257, s.vocab, "model.vocab_size");
  same_int(bert ? "hidden_size" : "n_embd", 768, s.hidden, "model.hidden");
  same_int(bert ? "num_hidden_layers" : "n_layer", 12, s.layers, "model.layers");
  same_int(bert ? "num_attention_heads" : "n_head", 12, s.heads, "model.heads");
  if (bert) {
    same_int("intermediate_size", 3072, s.ffn, "model.ffn");
  } else if (value("n_inner", nullptr).is_null()) {  // GPT-2's FFN is then 4 x n_embd
    if (s.ffn != 4 * s.hidden) throw differs("n_inner", nullptr, "model.ffn", std::to_string(s.ffn) + ", not 4 x n_embd");
  } else {
    same_int("n_inner", 0, s.ffn, "model.ffn");
  }
  same_int(bert ? "max_position_embeddings" : "n_positions", bert ? 512 : 1024, s.max_positions, "model.max_positions");
  if (bert) same_int("type_vocab_size", 2, s.type_vocab, "model.type_vocab_size");
  // transformers' names for the GELU our model computes: BERT's exact (erf) one; GPT-2's
  // tanh approximation, which gelu_fast, gelu_accurate and gelu_pytorch_tanh write out
  // differently but compute alike.
  const char* act_key = bert ? "hidden_act" : "activation_function";
  const json act = value(act_key, bert ? "gelu" : "gelu_new");
  const std::set<std::string> ours_act = bert ? std::set<std::string>{"gelu", "gelu_python"}
                                              : std::set<std::string>{"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"};
  if (!act.is_string() || !ours_act.count(act.get<std::string>()))
    throw ConfigError(path + ": '" + act_key + "' is " + act.dump() + "; mics-train's " +
                      (bert ? "BERT computes the exact GELU, \"gelu\"." : "GPT computes the tanh GELU, \"gelu_new\"."));
  const char* eps_key = bert ? "layer_norm_eps" : "layer_norm_epsilon";
  const json eps = value(eps_key, bert ? 1e-12 : 1e-5);
  // Both sides are the shortest decimal of a double, so equal settings compare equal.
  if (!eps.is_number() || eps.get<double>() != s.layernorm_eps)
    throw differs(eps_key, eps, "model.layernorm_eps", json(s.layernorm_eps).dump());
  std::vector<std::string> warnings;
  if (bert) {
    const json positions = value("position_embedding_type", "absolute");
    if (positions != "absolute")
      throw ConfigError(path + ": 'position_embedding_type' is " + positions.dump() +
                        "; mics-train's BERT has learned absolute positions, \"absolute\".");
    if (flag("is_decoder", false))
      throw ConfigError(path + ": 'is_decoder' is true; mics-train's BERT attends in both directions.");
  } else {
    if (!flag("scale_attn_weights", true))
      throw ConfigError(path + ": 'scale_attn_weights' is false; mics-train's GPT scales attention scores by "
                        "1/sqrt(head size).");
    if (flag("scale_attn_by_inverse_layer_idx", false))
      throw ConfigError(path + ": 'scale_attn_by_inverse_layer_idx' is true; mics-train's GPT does not scale "
                        "layer i's attention scores by 1/(i+1).");
    // Only where and in what precision transformers scales the scores (fp32 under fp16
    // autocast): the same function, so said rather than refused.
    if (flag("reorder_and_upcast_attn", false))
      warnings.push_back(path + ": 'reorder_and_upcast_attn' is true, a choice of precision in transformers' "
                         "attention that mics-train does not follow; the model it computes is the same.");
  }
  return warnings;
}

}  // namespace mics
