#include "engine/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/ops.h"

namespace mics {

using nlohmann::json;

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

// JSON text for a message; bytes that are not UTF-8 (a --set from a shell) as U+FFFD
// rather than an exception.
std::string as_json(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* json_kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a floating-point number";  // (1e12 is one too)
    default: return "a number";
  }
}

// Reads one section's keys into typed fields, remembering which keys were consumed so
// that anything left over is reported as unknown.
class SectionReader {
 public:
  SectionReader(const json& root, std::string section, const std::string& source)
      : section_(std::move(section)), source_(source) {
    if (root.contains(section_)) {
      node_ = &root.at(section_);
      if (!node_->is_object())
        fail("section '" + section_ + "' must be a JSON object, got " + json_kind(*node_));
    }
  }

  void get(const char* key, int64_t& out) {
    if (const json* v = find(key)) {
      if (!v->is_number_integer() && !v->is_number_unsigned())
        fail_type(key, "an integer", *v);
      out = v->get<int64_t>();
    }
  }
  void get(const char* key, double& out) {
    if (const json* v = find(key)) {
      if (!v->is_number()) fail_type(key, "a number", *v);
      out = v->get<double>();
    }
  }
  void get(const char* key, bool& out) {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) fail_type(key, "true or false", *v);
      out = v->get<bool>();
    }
  }
  void get(const char* key, std::string& out, const std::vector<std::string>& allowed = {}) {
    if (const json* v = find(key)) {
      if (!v->is_string()) fail_type(key, allowed.empty() ? "a string" : ("one of " + quoted(allowed)).c_str(), *v);
      out = v->get<std::string>();
      // (Checked when given: a key left out keeps its default, or is reported as required.)
      if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), out) == allowed.end())
        fail("'" + path(key) + "' is " + as_json(json(out)) + "; accepted values are " + quoted(allowed));
    }
  }
  // An integer, or the string "auto" (stored as 0).
  void get_int_or_auto(const char* key, int64_t& out) {
    if (const json* v = find(key)) {
      if (v->is_string() && v->get<std::string>() == "auto") {
        out = 0;
        return;
      }
      if (!v->is_number_integer() && !v->is_number_unsigned())
        fail_type(key, "an integer or \"auto\"", *v);
      out = v->get<int64_t>();
      if (out <= 0) fail("'" + path(key) + "' is " + std::to_string(out) + "; it must be a positive integer or \"auto\"");
    }
  }
  // true, false or "auto", stored as that word.
  void get_tristate(const char* key, std::string& out) {
    if (const json* v = find(key)) {
      if (v->is_boolean()) {
        out = v->get<bool>() ? "true" : "false";
      } else if (v->is_string() && (*v == "auto" || *v == "true" || *v == "false")) {
        out = v->get<std::string>();
      } else {
        fail_type(key, "true, false or \"auto\"", *v);
      }
    }
  }

  void finish() {
    if (node_ == nullptr) return;
    for (auto it = node_->begin(); it != node_->end(); ++it) {
      if (!seen_.count(it.key()))
        fail("unknown key '" + path(it.key()) + "'; keys accepted in '" + section_ + "' are " +
             join(std::vector<std::string>(known_.begin(), known_.end())));
    }
  }

  std::string path(const std::string& key) const { return section_ + "." + key; }
  [[noreturn]] void fail(const std::string& message) const {
    throw ConfigError(source_ + ": " + message + ".");
  }

 private:
  const json* find(const char* key) {
    known_.push_back(key);
    if (node_ == nullptr) return nullptr;
    auto it = node_->find(key);
    if (it == node_->end()) return nullptr;
    seen_.insert(key);
    return &*it;
  }
  [[noreturn]] void fail_type(const char* key, const char* expected, const json& got) const {
    fail("'" + path(key) + "' must be " + expected + ", got " + json_kind(got) + " (" + as_json(got) + ")");
  }
  static std::string quoted(const std::vector<std::string>& items) {
    std::vector<std::string> q;
    for (const auto& i : items) q.push_back("\"" + i + "\"");
    return join(q);
  }

  const json* node_ = nullptr;
  std::string section_;
  const std::string& source_;
  std::set<std::string> seen_;
  std::vector<std::string> known_;
};

void apply_override(json& doc, const std::string& assignment, const std::string& source) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set '" + assignment + "' must have the form key.path=value.");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;  // bare words are strings: --set model.type=gpt
  try {
    (void)value.dump();  // the config is logged and saved as JSON, which must be UTF-8
  } catch (const json::type_error&) {
    throw ConfigError("--set '" + key + "=...': the value is not valid UTF-8.");
  }
  json* node = &doc;
  std::stringstream parts(key);
  std::string part, walked;
  std::vector<std::string> names;
  while (std::getline(parts, part, '.')) names.push_back(part);
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) throw ConfigError("--set '" + assignment + "' has an empty key part.");
    if (node->is_null()) *node = json::object();  // a section the file leaves out
    if (!node->is_object())
      throw ConfigError(source + ": " + (walked.empty() ? "the config" : "section '" + walked + "'") +
                        " must be a JSON object, so --set '" + assignment + "' cannot apply.");
    walked += (i ? "." : "") + names[i];
    node = &(*node)[names[i]];
  }
  *node = value;
}

}  // namespace

namespace {
// train.precision and runtime.attention "auto", for a GPU of compute capability cc (major *
// 10 + minor; 0: none known, `unknown` says why). Each resolved setting keeps its reason.
void resolve_auto_settings(Config& c, int cc, const std::string& unknown) {
  const std::string gpu = "GPU compute capability " + std::to_string(cc / 10) + "." + std::to_string(cc % 10);
  TrainConfig& tc = c.train;
  if (tc.precision == "auto") {
    tc.precision = auto_precision(c.runtime.backend, cc);
    tc.precision_reason = c.runtime.backend == "cpu" ? "the CPU backend" : cc == 0 ? unknown : gpu;
  }
  if (c.runtime.attention == "auto") {
    const ModelConfig& mc = c.model;
    const int64_t head_dim = mc.heads > 0 ? mc.hidden / mc.heads : 0;
    std::string why_not;  // the first condition of "cudnn" this configuration misses
    if (c.runtime.backend != "cuda") why_not = "the CPU backend";
    else if (tc.precision != "bf16" && tc.precision != "fp16") why_not = "'train.precision' \"" + tc.precision + "\"";
    else if (head_dim % 8 != 0 || head_dim > 128) why_not = "head dimension " + std::to_string(head_dim);
    else if (mc.attention_dropout != 0) why_not = "'model.attention_dropout' set: cuDNN draws its own dropout mask";
    else if (cc != 0 && cc < 80) why_not = gpu;
    // Past cuDNN's deterministic backward's workspace budget (long sequences) it would run
    // its nondeterministic one: our fused kernels instead (deterministic, only each row's
    // log-sum-exp kept) where they take the head dimension and this GPU's shared memory;
    // unless cudnn_deterministic is false, which asks for that one anyway.
    const double workspace = cudnn_deterministic_workspace_estimate(
        AttentionDims{tc.micro_batch_size, tc.seq_len, mc.heads, head_dim, false});
    // Head dimension 128 needs 104.5 KiB of shared memory per block: the data-centre GPUs
    // (sm_80, sm_90, sm_100) have it, the others (sm_86, sm_89, sm_120: 99 KiB) do not.
    const bool big_shared = cc == 0 || cc == 80 || cc == 90 || cc == 100;
    const bool fused_fits = head_dim == 64 || (head_dim == 128 && big_shared);
    if (why_not.empty() && c.runtime.cudnn_deterministic &&
        workspace > static_cast<double>(kCudnnDeterministicWorkspaceBudget)) {
      why_not = "cuDNN's deterministic backward would need about " +
                std::to_string(static_cast<int64_t>(workspace / (1 << 20))) + " MiB of workspace, over its 1 GiB";
      c.runtime.attention = fused_fits ? "fused" : "materialized";
    } else {
      c.runtime.attention = why_not.empty() ? "cudnn" : "materialized";
    }
    c.runtime.attention_reason = !why_not.empty() ? why_not
                                 : "CUDA, " + tc.precision + ", head dimension " + std::to_string(head_dim) +
                                       ", no attention dropout" + (cc != 0 ? ", " + gpu : "; " + unknown);
  }
}
}  // namespace

namespace {
Config parse_document(const json& input, const std::string& source, const std::vector<std::string>& overrides);
}  // namespace

Config parse_config(const json& input, const std::string& source,
                    const std::vector<std::string>& overrides) {
  try {
    return parse_document(input, source, overrides);
  } catch (const ConfigError& e) {
    // A refusal naming a key that --set gave names the flag too: the file does not hold
    // that value. (The last --set of a key is the one that counts.)
    std::string message = e.what();
    for (auto it = overrides.rbegin(); it != overrides.rend(); ++it) {
      const std::string key = it->substr(0, it->find('='));
      if (key.empty() || message.find("'" + key + "'") == std::string::npos || message.find("--set") != std::string::npos)
        continue;
      if (!message.empty() && message.back() == '.') message.pop_back();
      throw ConfigError(message + " (from --set " + *it + ").");
    }
    throw;
  }
}

namespace {
Config parse_document(const json& input, const std::string& source, const std::vector<std::string>& overrides) {
  if (!input.is_object())
    throw ConfigError(source + ": the config must be a JSON object with sections model, train, "
                      "data, mics, runtime, checkpoint and log.");
  json doc = input;
  for (const std::string& o : overrides) apply_override(doc, o, source);

  static const std::set<std::string> kSections = {"model", "train", "data", "mics", "runtime", "log", "checkpoint"};
  for (auto it = doc.begin(); it != doc.end(); ++it)
    if (!kSections.count(it.key()))
      throw ConfigError(source + ": unknown section '" + it.key() +
                        "'; sections are model, train, data, mics, runtime, log and checkpoint.");

  Config c;
  c.source_name = source;
  auto must = [&](const SectionReader& r, bool ok, const std::string& message) {
    if (!ok) r.fail(message);
  };

  {
    SectionReader r(doc, "model", source);
    ModelConfig& m = c.model;
    r.get("type", m.type, {"bert", "gpt"});
    r.get("hidden", m.hidden);
    r.get("layers", m.layers);
    r.get("heads", m.heads);
    r.get("ffn", m.ffn);
    r.get("vocab_size", m.vocab_size);
    r.get("max_positions", m.max_positions);
    r.get("type_vocab_size", m.type_vocab_size);
    r.get("layernorm_eps", m.layernorm_eps);
    r.get("dropout", m.dropout);
    r.get("attention_dropout", m.attention_dropout);
    r.get("init_std", m.init_std);
    r.finish();
  }
  {
    SectionReader r(doc, "train", source);
    TrainConfig& t = c.train;
    r.get("seq_len", t.seq_len);
    r.get("micro_batch_size", t.micro_batch_size);
    r.get("global_batch_size", t.global_batch_size);
    r.get("steps", t.steps);
    r.get("lr", t.lr);
    r.get("min_lr", t.min_lr);
    r.get("warmup_steps", t.warmup_steps);
    r.get("lr_decay", t.lr_decay, {"constant", "linear", "cosine"});
    r.get("weight_decay", t.weight_decay);
    r.get("adam_beta1", t.adam_beta1);
    r.get("adam_beta2", t.adam_beta2);
    r.get("adam_eps", t.adam_eps);
    r.get("grad_clip", t.grad_clip);
    r.get("max_skipped_steps", t.max_skipped_steps);
    r.get("initial_loss_scale", t.initial_loss_scale);
    r.get("seed", t.seed);
    r.get("precision", t.precision, {"auto", "fp32", "bf16", "fp16"});
    r.get("activation_checkpointing", t.activation_checkpointing);
    r.get("keep_ffn_output", t.keep_ffn_output);
    r.finish();
    must(r, !t.keep_ffn_output || t.activation_checkpointing,
         "'train.keep_ffn_output' keeps an activation the recompute would otherwise rebuild; it needs "
         "'train.activation_checkpointing' true");
    must(r, !t.keep_ffn_output || c.model.type == "bert",
         "'train.keep_ffn_output' applies to post-LN models (\"bert\"); a GPT block's recompute never runs its FFN's "
         "second product, whose output its backward does not read");
  }
  {
    SectionReader r(doc, "data", source);
    r.get("source", c.data.source, {"synthetic", "text", "shards"});
    r.get("path", c.data.path);
    r.get("mask_prob", c.data.mask_prob);
    r.get("mask_token_id", c.data.mask_token_id);
    r.get("shuffle", c.data.shuffle);
    r.finish();
  }
  {
    SectionReader r(doc, "mics", source);
    r.get_int_or_auto("partition_size", c.mics.partition_size);
    r.get_tristate("hierarchical_allgather", c.mics.hierarchical_allgather);
    r.get("gradient_sync", c.mics.gradient_sync, {"two_hop", "every_microstep"});
    r.get("replication_dtype", c.mics.replication_dtype, {"fp32", "compute"});
    r.get("prefetch", c.mics.prefetch);
    r.finish();
    must(r, c.mics.prefetch >= 0, "'mics.prefetch' is " + std::to_string(c.mics.prefetch) +
                                      "; it must be 0 or more layers");
    must(r, c.mics.replication_dtype == "fp32" || c.mics.gradient_sync == "two_hop",
         "'mics.replication_dtype' \"compute\" applies to the two-hop sync; with 'mics.gradient_sync' "
         "\"every_microstep\" every micro-step's all-reduce is fp32");
  }
  {
    SectionReader r(doc, "runtime", source);
    r.get("backend", c.runtime.backend, {"cpu", "cuda"});
    r.get("ranks_per_node", c.runtime.ranks_per_node);
    r.get("device_memory_gb", c.runtime.device_memory_gb);
    r.get("comm_timeout_s", c.runtime.comm_timeout_s);
    r.get("communicator", c.runtime.communicator, {"auto", "mpi", "nccl", "staged"});
    r.get("attention", c.runtime.attention, {"auto", "materialized", "fused", "cudnn"});
    r.get("cudnn_deterministic", c.runtime.cudnn_deterministic);
    r.get("gemm_autotune", c.runtime.gemm_autotune);
    r.get("overlap_optimizer", c.runtime.overlap_optimizer);
    r.get("overlap_optimizer_sms", c.runtime.overlap_optimizer_sms);
    r.get("overlap_optimizer_chunked", c.runtime.overlap_optimizer_chunked);
    r.get("overlap_weight_grads", c.runtime.overlap_weight_grads);
    r.finish();
    must(r, c.runtime.overlap_optimizer_sms >= 0, "'runtime.overlap_optimizer_sms' must be 0 (no bound) or a positive number of SMs");
    must(r, c.runtime.overlap_optimizer_sms == 0 || c.runtime.overlap_optimizer,
         "'runtime.overlap_optimizer_sms' bounds the overlapped optimizer update; it needs 'runtime.overlap_optimizer' true");
    must(r, c.runtime.overlap_optimizer_sms == 0 || c.runtime.backend == "cuda",
         "'runtime.overlap_optimizer_sms' bounds the SMs of a GPU; it needs 'runtime.backend' \"cuda\"");
    must(r, c.runtime.overlap_optimizer_chunked || c.runtime.overlap_optimizer_sms > 0,
         "'runtime.overlap_optimizer_chunked' false runs the bounded update unchunked; it needs "
         "'runtime.overlap_optimizer_sms' above 0");
    must(r, !c.runtime.overlap_weight_grads || c.runtime.backend == "cuda",
         "'runtime.overlap_weight_grads' runs the weight gradients on a second GPU stream; it needs 'runtime.backend' "
         "\"cuda\"");
    must(r, !c.runtime.gemm_autotune || c.runtime.backend == "cuda",
         "'runtime.gemm_autotune' times cuBLASLt's algorithms; it needs 'runtime.backend' \"cuda\"");
    must(r, c.runtime.cudnn_deterministic || (c.runtime.backend == "cuda" &&
                                              (c.runtime.attention == "cudnn" || c.runtime.attention == "auto")),
         "'runtime.cudnn_deterministic' false chooses cuDNN's nondeterministic attention backward; it needs "
         "'runtime.backend' \"cuda\" and 'runtime.attention' \"cudnn\" or \"auto\"");
    const std::string& comm = c.runtime.communicator;
    must(r, comm == "auto" || comm == "staged" || (comm == "mpi") == (c.runtime.backend == "cpu"),
         "'runtime.communicator' \"" + comm + "\" does not go with 'runtime.backend' \"" + c.runtime.backend +
             "\": the CPU uses \"mpi\" (or \"staged\", for tests), CUDA \"nccl\" or \"staged\"");
    must(r, c.runtime.ranks_per_node >= 0,
         "'runtime.ranks_per_node' must be 0 (detect) or a positive integer");
    must(r, c.runtime.device_memory_gb > 0, "'runtime.device_memory_gb' must be positive");
    // Under a second, a wait that is merely slow is taken for a dead rank, and the liveness
    // pings that name it get no time to answer.
    must(r, c.runtime.comm_timeout_s >= 1, "'runtime.comm_timeout_s' must be at least 1 second (got " +
                                               as_json(c.runtime.comm_timeout_s) + ")");
  }
  {
    SectionReader r(doc, "log", source);
    r.get("every", c.log.every);
    r.get("level", c.log.level, {"trace", "debug", "info", "warn", "error"});
    r.get("metrics", c.log.metrics);
    r.finish();
    must(r, c.log.every >= 1, "'log.every' is " + std::to_string(c.log.every) +
                                  "; it must be at least 1 step");
  }
  {
    SectionReader r(doc, "checkpoint", source);
    r.get("dir", c.checkpoint.dir);
    r.get("every", c.checkpoint.every);
    r.get("keep", c.checkpoint.keep);
    r.finish();
    must(r, c.checkpoint.every >= 0, "'checkpoint.every' must be 0 (only the last step) or a positive number of steps");
    must(r, c.checkpoint.keep >= 0, "'checkpoint.keep' must be 0 (keep all) or a positive count");
    must(r, c.checkpoint.every == 0 || !c.checkpoint.dir.empty(), "'checkpoint.every' is set but 'checkpoint.dir' is empty");
  }

  // ---- values that must make sense together ----
  SectionReader m(doc, "model", source), t(doc, "train", source), d(doc, "data", source);
  ModelConfig& mc = c.model;
  TrainConfig& tc = c.train;
  const bool bert = mc.type == "bert";
  must(m, !mc.type.empty(), "'model.type' is required; accepted values are \"bert\", \"gpt\"");
  must(m, mc.hidden > 0, "'model.hidden' must be a positive integer");
  must(m, mc.layers > 0, "'model.layers' must be a positive integer (got " + std::to_string(mc.layers) + ")");
  must(m, mc.heads > 0, "'model.heads' must be a positive integer");
  must(m, c.mics.prefetch <= mc.layers, "'mics.prefetch' (" + std::to_string(c.mics.prefetch) +
                                            ") is more than 'model.layers' (" + std::to_string(mc.layers) +
                                            "): each layer gathered ahead holds a whole layer's weights");
  must(m, mc.hidden % mc.heads == 0, "'model.heads' (" + std::to_string(mc.heads) +
                                         ") must divide 'model.hidden' (" +
                                         std::to_string(mc.hidden) + ")");
  must(m, mc.vocab_size > (bert ? 1 : 0), "'model.vocab_size' must be a positive integer" +
                                              std::string(bert ? " above 1 (BERT keeps one id for [MASK])" : ""));
  if (mc.ffn == 0) mc.ffn = 4 * mc.hidden;
  must(m, mc.ffn > 0, "'model.ffn' must be a positive integer (0 means 4 x hidden)");
  must(t, tc.seq_len > 0, "'train.seq_len' must be a positive integer");
  if (mc.max_positions == 0) mc.max_positions = tc.seq_len;
  must(m, mc.max_positions >= tc.seq_len,
       "'train.seq_len' (" + std::to_string(tc.seq_len) + ") is longer than 'model.max_positions' (" +
           std::to_string(mc.max_positions) + ")");
  if (mc.type_vocab_size == -1) mc.type_vocab_size = bert ? 2 : 0;
  must(m, bert ? mc.type_vocab_size >= 1 : mc.type_vocab_size == 0,
       bert ? "'model.type_vocab_size' must be at least 1 for BERT"
            : "'model.type_vocab_size' must be 0 for GPT, which has no token types");
  if (std::isnan(mc.layernorm_eps)) mc.layernorm_eps = bert ? 1e-12 : 1e-5;
  must(m, mc.layernorm_eps > 0, "'model.layernorm_eps' must be positive (got " + as_json(mc.layernorm_eps) + ")");
  must(m, mc.dropout >= 0 && mc.dropout < 1, "'model.dropout' must be in [0, 1)");
  must(m, mc.attention_dropout >= 0 && mc.attention_dropout < 1,
       "'model.attention_dropout' must be in [0, 1)");
  must(m, mc.init_std > 0, "'model.init_std' must be positive");

  must(t, tc.micro_batch_size > 0, "'train.micro_batch_size' must be a positive integer");
  must(t, tc.global_batch_size >= 0,
       "'train.global_batch_size' must be a positive multiple of micro_batch_size x ranks, or 0 for one micro-batch per rank");
  must(t, tc.global_batch_size == 0 || tc.global_batch_size % tc.micro_batch_size == 0,
       "'train.global_batch_size' (" + std::to_string(tc.global_batch_size) +
           ") must be a multiple of 'train.micro_batch_size' (" + std::to_string(tc.micro_batch_size) + ")");
  must(t, tc.steps > 0, "'train.steps' must be a positive integer");
  must(t, std::isfinite(tc.lr) && tc.lr > 0, "'train.lr' must be a positive number (got " + as_json(tc.lr) + ")");
  must(t, tc.min_lr >= 0 && tc.min_lr <= tc.lr,
       "'train.min_lr' (" + as_json(tc.min_lr) + ") must be in [0, 'train.lr' (" + as_json(tc.lr) + ")]");
  must(t, tc.warmup_steps >= 0, "'train.warmup_steps' must be 0 or more");
  must(t, tc.weight_decay >= 0, "'train.weight_decay' must be 0 or more");
  must(t, tc.adam_beta1 >= 0 && tc.adam_beta1 < 1, "'train.adam_beta1' must be in [0, 1)");
  must(t, tc.adam_beta2 >= 0 && tc.adam_beta2 < 1, "'train.adam_beta2' must be in [0, 1)");
  must(t, tc.adam_eps > 0, "'train.adam_eps' must be positive");
  must(t, tc.grad_clip >= 0, "'train.grad_clip' must be 0 (off) or a positive norm");
  must(t, tc.seed >= 0, "'train.seed' must be 0 or more");
  must(t, tc.max_skipped_steps >= 1, "'train.max_skipped_steps' must be at least 1");
  must(t, std::isfinite(tc.initial_loss_scale) && tc.initial_loss_scale >= 0,
       "'train.initial_loss_scale' must be 0 (the default, 2^16) or a positive number");
  if (tc.precision == "auto" || c.runtime.attention == "auto") {
    const int cc = c.runtime.backend == "cuda" && cuda_device_count() > 0 ? cuda_compute_capability(0) : 0;
    resolve_auto_settings(c, cc, cc == 0 ? "no GPU visible here" : "");
  }
  must(t, tc.precision == "fp32" || c.runtime.backend == "cuda",
       "'train.precision' \"" + tc.precision + "\" needs 'runtime.backend' \"cuda\"; the CPU backend computes in \"fp32\"");
  if (c.runtime.attention == "cudnn") {
    const int64_t head_dim = mc.hidden / mc.heads;
    must(t, c.runtime.backend == "cuda", "'runtime.attention' \"cudnn\" needs 'runtime.backend' \"cuda\"");
    must(t, tc.precision == "bf16" || tc.precision == "fp16",
         "'runtime.attention' \"cudnn\" runs in bf16 or fp16, not 'train.precision' \"" + tc.precision +
             "\": use \"materialized\"");
    must(t, head_dim % 8 == 0 && head_dim <= 128,
         "'runtime.attention' \"cudnn\" takes a head dimension ('model.hidden' / 'model.heads') that is a multiple "
         "of 8 up to 128, not " + std::to_string(head_dim) + ": use \"materialized\"");
    must(t, mc.attention_dropout == 0,
         "'runtime.attention' \"cudnn\" takes no 'model.attention_dropout' (cuDNN draws its own dropout mask, "
         "which the CPU backend cannot reproduce); set it to 0 or use \"fused\"");
  }
  if (c.runtime.attention == "fused" && c.runtime.backend == "cuda") {
    const int64_t head_dim = mc.hidden / mc.heads;
    must(t, (tc.precision == "bf16" || tc.precision == "fp16") && (head_dim == 64 || head_dim == 128),
         "'runtime.attention' \"fused\" on the CUDA backend runs in bf16 or fp16 with a head dimension "
         "('model.hidden' / 'model.heads') of 64 or 128; this configuration has " + tc.precision + " and " +
             std::to_string(head_dim) + ": use \"materialized\"");
  }

  DataConfig& dc = c.data;
  must(d, dc.source == "synthetic" || !dc.path.empty(),
       "'data.path' is required when 'data.source' is \"" + dc.source + "\" (a file, directory or glob)");
  must(d, dc.source != "synthetic" || dc.path.empty(),
       "'data.path' is set but 'data.source' is \"synthetic\"; set data.source to \"text\" or \"shards\"");
  if (bert) {
    must(d, dc.mask_token_id >= -1, "'data.mask_token_id' (" + std::to_string(dc.mask_token_id) +
                                        ") must be a token id, or -1 for the vocabulary's last");
    if (dc.mask_token_id == -1) dc.mask_token_id = mc.vocab_size - 1;
    must(d, dc.mask_token_id < mc.vocab_size, "'data.mask_token_id' (" + std::to_string(dc.mask_token_id) +
                                                  ") must be below 'model.vocab_size' (" +
                                                  std::to_string(mc.vocab_size) + ")");
    must(d, dc.source != "synthetic" || dc.mask_token_id >= 1,
         "'data.mask_token_id' (0): synthetic BERT data draws its tokens from the ids below it, so it must be at least 1");
    must(d, dc.mask_prob > 0 && dc.mask_prob < 1, "'data.mask_prob' must be in (0, 1)");
    must(d, dc.source != "text" || (mc.vocab_size > 256 && dc.mask_token_id >= 256),
         "byte-level text uses ids 0..255, so BERT needs 'model.vocab_size' above 256 and 'data.mask_token_id' at 256 or above");
  } else {
    must(d, dc.mask_token_id == -1, "'data.mask_token_id' applies to BERT only; 'model.type' is " + as_json(mc.type));
  }
  must(d, dc.source != "text" || mc.vocab_size >= 256,
       "'model.vocab_size' (" + std::to_string(mc.vocab_size) + ") must be at least 256 for byte-level text");
  return c;
}
}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw ConfigError("cannot open config file '" + path + "'.");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json doc;
  // A key given twice in one object: JSON keeps the last, so the other would be ignored
  // without a word. The path of the first repeated key, kept while parsing.
  std::vector<std::pair<std::set<std::string>, std::string>> objects;  // keys seen, the last one
  std::string repeated;
  const json::parser_callback_t note_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) objects.emplace_back();
    if (event == json::parse_event_t::object_end && !objects.empty()) objects.pop_back();
    if (event == json::parse_event_t::key && !objects.empty()) {
      const std::string key = parsed.get<std::string>();
      if (!objects.back().first.insert(key).second && repeated.empty()) {
        for (size_t i = 0; i + 1 < objects.size(); ++i) repeated += objects[i].second + ".";
        repeated += key;
      }
      objects.back().second = key;
    }
    return true;
  };
  try {
    doc = json::parse(text, note_keys, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    // Where, as an editor shows it: the line and column of the byte the parser stopped at.
    const size_t at = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    const size_t line_start = text.rfind('\n', at == 0 ? 0 : at - 1);
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    const size_t column = at - (line_start == std::string::npos || at == 0 ? 0 : line_start + 1) + 1;
    throw ConfigError(path + " is not valid JSON at line " + std::to_string(line) + ", column " +
                      std::to_string(column) + ".");
  } catch (const json::exception& e) {  // a number beyond a double's range (1e400)
    std::string what = e.what();
    what.erase(0, what.find("] ") == std::string::npos ? 0 : what.find("] ") + 2);  // nlohmann's "[json.exception.*] "
    throw ConfigError(path + " cannot be read as a config: " + what + ".");
  }
  if (!repeated.empty())
    throw ConfigError(path + ": '" + repeated + "' is given twice; JSON keeps only the last, so remove the other.");
  Config c = parse_config(doc, path, overrides);
  // Said of what the user wrote only: a saved config (a checkpoint's) holds every key.
  const auto mask_prob_set = std::find_if(overrides.rbegin(), overrides.rend(), [](const std::string& o) {
    return o.rfind("data.mask_prob=", 0) == 0;
  });
  const bool in_file = doc.contains("data") && doc.at("data").is_object() && doc.at("data").contains("mask_prob");
  if (c.model.type != "bert" && (in_file || mask_prob_set != overrides.rend()))
    throw ConfigError(path + ": 'data.mask_prob' applies to BERT only; GPT predicts every next token" +
                      (mask_prob_set != overrides.rend() ? " (from --set " + *mask_prob_set + ")." : "."));
  return c;
}

Config resolved_for_gpu(const Config& config, int compute_capability, const std::string& gpu) {
  Config c = config;
  if (compute_capability == 0) return c;
  if (!c.train.precision_reason.empty()) c.train.precision = "auto";
  if (!c.runtime.attention_reason.empty()) c.runtime.attention = "auto";
  resolve_auto_settings(c, compute_capability, "");
  // The reasons name the GPU planned for, not this machine's (a CPU config runs no GPU).
  if (c.runtime.backend == "cuda") {
    if (!c.train.precision_reason.empty()) c.train.precision_reason = gpu + ": " + c.train.precision_reason;
    if (!c.runtime.attention_reason.empty()) c.runtime.attention_reason = gpu + ": " + c.runtime.attention_reason;
    // What that GPU could not run, as the CUDA backend would refuse it there: not priced.
    const std::string cc = std::to_string(compute_capability / 10) + "." + std::to_string(compute_capability % 10);
    if (compute_capability < 80 && c.train.precision == "bf16")
      throw ConfigError(config.source_name + ": 'train.precision' \"bf16\" needs compute capability 8.0 or newer; " +
                        gpu + " is " + cc + ": use \"fp16\" or \"auto\".");
    if (compute_capability < 80 && (c.runtime.attention == "cudnn" || c.runtime.attention == "fused"))
      throw ConfigError(config.source_name + ": 'runtime.attention' \"" + c.runtime.attention +
                        "\" needs compute capability 8.0 or newer; " + gpu + " is " + cc +
                        ": use \"materialized\" or \"auto\".");
  }
  return c;
}

std::string auto_precision(const std::string& backend, int compute_capability) {
  if (backend != "cuda") return "fp32";
  return compute_capability == 0 || compute_capability >= 80 ? "bf16" : "fp16";
}

DType compute_dtype(const std::string& precision) {
  if (precision == "bf16") return DType::bf16;
  if (precision == "fp16") return DType::f16;
  return DType::f32;
}

int64_t Config::accumulation_steps(int64_t world, int64_t micro_batch) const {
  const int64_t per_round = micro_batch * world;
  if (train.global_batch_size == 0) return 1;
  return train.global_batch_size % per_round == 0 ? train.global_batch_size / per_round : 0;
}

int64_t Config::checked_accumulation_steps(int64_t world) const {
  const int64_t steps = accumulation_steps(world, train.micro_batch_size);
  if (steps == 0)
    throw ConfigError(source_name + ": 'train.global_batch_size' (" + std::to_string(train.global_batch_size) +
                      ") must be a multiple of micro_batch_size x ranks (" + std::to_string(train.micro_batch_size) +
                      " x " + std::to_string(world) + ").");
  return steps;
}

model::ModelSpec Config::model_spec() const {
  model::ModelSpec s;
  s.arch = model.type == "bert" ? model::Arch::bert : model::Arch::gpt;
  s.hidden = model.hidden;
  s.layers = model.layers;
  s.heads = model.heads;
  s.ffn = model.ffn;
  s.vocab = model.vocab_size;
  s.max_positions = model.max_positions;
  s.type_vocab = model.type_vocab_size;
  s.layernorm_eps = model.layernorm_eps;
  s.dropout = static_cast<float>(model.dropout);
  s.attention_dropout = static_cast<float>(model.attention_dropout);
  s.init_std = model.init_std;
  s.activation_checkpointing = train.activation_checkpointing;
  s.keep_ffn_output = train.keep_ffn_output;
  s.fused_attention = runtime.attention == "fused" || runtime.attention == "cudnn";
  return s;
}

json Config::to_json() const {
  json j;
  j["model"] = {{"type", model.type}, {"hidden", model.hidden}, {"layers", model.layers},
                {"heads", model.heads}, {"ffn", model.ffn}, {"vocab_size", model.vocab_size},
                {"max_positions", model.max_positions}, {"type_vocab_size", model.type_vocab_size},
                {"layernorm_eps", model.layernorm_eps}, {"dropout", model.dropout},
                {"attention_dropout", model.attention_dropout}, {"init_std", model.init_std}};
  j["train"] = {{"seq_len", train.seq_len}, {"micro_batch_size", train.micro_batch_size},
                {"global_batch_size", train.global_batch_size}, {"steps", train.steps},
                {"lr", train.lr}, {"min_lr", train.min_lr}, {"warmup_steps", train.warmup_steps},
                {"lr_decay", train.lr_decay}, {"weight_decay", train.weight_decay},
                {"adam_beta1", train.adam_beta1}, {"adam_beta2", train.adam_beta2},
                {"adam_eps", train.adam_eps}, {"grad_clip", train.grad_clip},
                {"max_skipped_steps", train.max_skipped_steps},
                {"initial_loss_scale", train.initial_loss_scale},
                {"seed", train.seed}, {"precision", train.precision},
                {"activation_checkpointing", train.activation_checkpointing},
                {"keep_ffn_output", train.keep_ffn_output}};
  j["data"] = {{"source", data.source}, {"path", data.path}, {"mask_prob", data.mask_prob},
               {"mask_token_id", data.mask_token_id}, {"shuffle", data.shuffle}};
  j["mics"] = {{"partition_size", mics.partition_size == 0 ? json("auto") : json(mics.partition_size)},
               {"hierarchical_allgather", mics.hierarchical_allgather},
               {"gradient_sync", mics.gradient_sync}, {"replication_dtype", mics.replication_dtype},
               {"prefetch", mics.prefetch}};
  j["runtime"] = {{"backend", runtime.backend}, {"ranks_per_node", runtime.ranks_per_node},
                  {"device_memory_gb", runtime.device_memory_gb}, {"comm_timeout_s", runtime.comm_timeout_s},
                  {"communicator", runtime.communicator}, {"attention", runtime.attention},
                  // (where the attention is not cuDNN's the key changes nothing, and false
                  // would be refused when the saved config is read back: export, say)
                  {"cudnn_deterministic", runtime.cudnn_deterministic || runtime.attention != "cudnn"},
                  {"gemm_autotune", runtime.gemm_autotune}, {"overlap_optimizer", runtime.overlap_optimizer},
                  {"overlap_optimizer_sms", runtime.overlap_optimizer_sms},
                  {"overlap_optimizer_chunked", runtime.overlap_optimizer_chunked},
                  {"overlap_weight_grads", runtime.overlap_weight_grads}};
  j["log"] = {{"every", log.every}, {"level", log.level}, {"metrics", log.metrics}};
  j["checkpoint"] = {{"dir", checkpoint.dir}, {"every", checkpoint.every}, {"keep", checkpoint.keep}};
  return j;
}

}  // namespace mics
