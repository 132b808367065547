// BERT (BertForMaskedLM architecture): token + position + token-type embeddings with
// LayerNorm, post-LN bidirectional blocks with erf GELU, and the MLM head (dense + GELU +
// LayerNorm transform, decoder tied to the token embedding, decoder bias). The head runs
// only on the masked positions; the loss is their mean cross-entropy.
#include <vector>

#include "model/architectures.h"
#include "model/block_stack.h"

namespace mics::model {

namespace {

BlockShape bert_block(const ModelSpec& s) {
  return BlockShape{s.hidden, s.heads, s.ffn, /*pre_norm=*/false, /*causal=*/false, GeluKind::erf,
                    s.layernorm_eps, s.dropout, s.attention_dropout, s.activation_checkpointing,
                    s.fused_attention, s.keep_ffn_output};
}

class Bert final : public Model {
 public:
  Bert(const ModelSpec& spec, Backend& backend, DType dtype, int64_t batch, int64_t seq,
       int64_t shard_multiple)
      : spec_(spec), be_(backend), dtype_(dtype), batch_(batch), seq_(seq),
        layout_(bert_layout(spec, shard_multiple)),
        stack_(backend, bert_block(spec), layout_, spec.layers, batch, seq, "layers."),
        head_layer_(static_cast<int>(spec.layers) + 1),
        tok_(layout_.at("embed.tokens")), pos_(layout_.at("embed.positions")),
        type_(layout_.at("embed.token_types")), emb_g_(layout_.at("embed.norm.weight")),
        emb_b_(layout_.at("embed.norm.bias")), tr_w_(layout_.at("mlm.transform.weight")),
        tr_b_(layout_.at("mlm.transform.bias")), tr_g_(layout_.at("mlm.norm.weight")),
        tr_beta_(layout_.at("mlm.norm.bias")), dec_b_(layout_.at("mlm.decoder_bias")) {
    Arena measure;
    allocate(measure);
    arena_ = Arena(backend, measure.used());
    allocate(arena_);
    // One segment per sequence: every token type is 0.
    std::vector<int32_t> zeros(static_cast<size_t>(rows()), 0);
    be_.copy_from_host(type_ids_.data, zeros.data(), sizeof(int32_t) * zeros.size());
    host_rows_.reserve(static_cast<size_t>(rows()));
    host_labels_.reserve(static_cast<size_t>(rows()));
  }

  const ParamLayout& layout() const override { return layout_; }
  const ModelSpec& spec() const override { return spec_; }
  size_t activation_bytes() const override { return arena_.used(); }

  double forward(ParamProvider& params, const TokenBatch& batch, uint64_t seed,
                 double grad_scale) override {
    check_batch_shape("BERT", batch, batch_, seq_);
    seed_ = seed;
    grad_scale_ = grad_scale;
    host_rows_.clear();
    host_labels_.clear();
    for (int64_t i = 0; i < rows(); ++i) {
      if (batch.labels[i] < 0) continue;
      host_rows_.push_back(static_cast<int32_t>(i));
      host_labels_.push_back(batch.labels[i]);
    }
    const int64_t n = masked();
    be_.copy_from_host(ids_.data, batch.tokens, sizeof(int32_t) * static_cast<size_t>(rows()));
    be_.copy_from_host(rows_.data, host_rows_.data(), sizeof(int32_t) * host_rows_.size());
    be_.copy_from_host(labels_.data, host_labels_.data(), sizeof(int32_t) * host_labels_.size());

    Tensor emb = params.acquire_params(0);
    be_.embedding_forward(emb_sum_, ids_, type_ids_, ref(emb, tok_), ref(emb, pos_),
                          ref(emb, type_), seq_);
    be_.layernorm_forward(stack_.input(), emb_mean_, emb_rstd_, emb_sum_, ref(emb, emb_g_),
                          ref(emb, emb_b_), eps());
    params.release_params(0);
    const DropoutSpec drop = embedding_dropout();
    if (drop.enabled()) be_.dropout_forward(stack_.input(), stack_.input(), drop);

    stack_.forward(params, seed);
    if (n == 0) return 0.0;

    // MLM head on the n masked rows only.
    Tensor head = params.acquire_params(head_layer_);
    be_.gather_rows(rows_view(picked_), stack_.output(), rows_n());
    be_.linear_forward(rows_view(tr_pre_), rows_view(picked_), ref(head, tr_w_), ref(head, tr_b_));
    be_.gelu_forward(rows_view(tr_act_), rows_view(tr_pre_), GeluKind::erf);
    be_.layernorm_forward(rows_view(tr_out_), tr_mean_.slice(0, {n}), tr_rstd_.slice(0, {n}),
                          rows_view(tr_act_), ref(head, tr_g_), ref(head, tr_beta_), eps());
    Tensor wte = ref(params.acquire_params(0), tok_);
    Tensor logits = logits_.slice(0, {n, spec_.vocab});
    be_.linear_forward(logits, rows_view(tr_out_), wte, ref(head, dec_b_));
    const bool want_grad = grad_scale > 0;
    be_.cross_entropy(losses_.slice(0, {n}), want_grad ? logits : Tensor{}, logits, labels_n(),
                      want_grad ? grad_scale / static_cast<double>(n) : 0.0);
    params.release_params(0);
    params.release_params(head_layer_);
    return be_.sum(losses_.slice(0, {n})) / static_cast<double>(n);
  }

  void backward(ParamProvider& params) override {
    if (grad_scale_ <= 0) throw std::logic_error("Bert::backward without a forward that formed gradients");
    const int64_t n = masked();
    Tensor head = params.acquire_params(head_layer_);
    const GradBuffer head_buffer = params.grad_buffer(head_layer_);
    const GradBuffer emb_buffer = params.grad_buffer(0);
    const Tensor head_grad = head_buffer.grads, emb_grad = emb_buffer.grads;
    // Fresh buffers (a step's first micro-step with gradients in place) come together: the
    // head's ops then write their gradients (=), the decoder's weight gradient included,
    // which the embedding's backward adds to; what no op writes is zeroed.
    const bool fresh = head_buffer.fresh && emb_buffer.fresh;
    if (!fresh) {
      if (head_buffer.fresh) be_.fill_zero(head_grad);
      if (emb_buffer.fresh) be_.fill_zero(emb_grad);
    }
    const Accumulate params_acc = fresh ? Accumulate::no : Accumulate::yes;
    be_.fill_zero(stack_.grad());
    if (n > 0) {
      Tensor wte = ref(params.acquire_params(0), tok_);
      be_.linear_backward(rows_view(d_a_), ref(emb_grad, tok_), ref(head_grad, dec_b_),
                          logits_.slice(0, {n, spec_.vocab}), rows_view(tr_out_), wte,
                          Accumulate::no, params_acc);
      params.release_params(0);
      be_.layernorm_backward(rows_view(d_b_), ref(head_grad, tr_g_), ref(head_grad, tr_beta_),
                             rows_view(d_a_), rows_view(tr_act_), ref(head, tr_g_),
                             tr_mean_.slice(0, {n}), tr_rstd_.slice(0, {n}), Accumulate::no, params_acc);
      be_.gelu_backward(rows_view(d_b_), rows_view(d_b_), rows_view(tr_pre_), GeluKind::erf);
      be_.linear_backward(rows_view(d_a_), ref(head_grad, tr_w_), ref(head_grad, tr_b_),
                          rows_view(d_b_), rows_view(picked_), ref(head, tr_w_), Accumulate::no, params_acc);
      be_.scatter_add_rows(stack_.grad(), rows_view(d_a_), rows_n());
    } else if (fresh) {  // no masked token: the head has no gradient, the tokens none from it
      be_.fill_zero(head_grad);
      be_.fill_zero(ref(emb_grad, tok_));
    }
    if (fresh) {  // the embedding's backward adds into these
      be_.fill_zero(ref(emb_grad, pos_));
      be_.fill_zero(ref(emb_grad, type_));
    }
    params.release_params(head_layer_);
    params.grads_ready(head_layer_);

    stack_.backward(params, seed_);

    const DropoutSpec drop = embedding_dropout();
    if (drop.enabled()) be_.dropout_backward(stack_.grad(), stack_.grad(), drop);
    Tensor emb = params.acquire_params(0);
    be_.layernorm_backward(d_emb_, ref(emb_grad, emb_g_), ref(emb_grad, emb_b_), stack_.grad(),
                           emb_sum_, ref(emb, emb_g_), emb_mean_, emb_rstd_, Accumulate::no, params_acc);
    params.release_params(0);
    be_.embedding_backward(ref(emb_grad, tok_), ref(emb_grad, pos_), ref(emb_grad, type_), d_emb_,
                           ids_, type_ids_, seq_);
    params.grads_ready(0);
  }

 private:
  int64_t rows() const { return batch_ * seq_; }
  int64_t masked() const { return static_cast<int64_t>(host_rows_.size()); }
  float eps() const { return static_cast<float>(spec_.layernorm_eps); }
  Tensor rows_view(const Tensor& t) const { return t.slice(0, {masked(), t.shape[1]}); }
  IntTensor rows_n() const { return IntTensor{rows_.data, {masked()}}; }
  IntTensor labels_n() const { return IntTensor{labels_.data, {masked()}}; }
  static Tensor ref(Tensor span, const ParamTensor& t) { return param_view(span, t); }
  DropoutSpec embedding_dropout() const { return model::embedding_dropout(spec_.dropout, seed_); }
  void allocate(Arena& a) {
    const int64_t M = rows(), C = spec_.hidden;
    stack_.allocate(a, dtype_);
    emb_sum_ = a.take(dtype_, {M, C});
    d_emb_ = a.take(dtype_, {M, C});
    emb_mean_ = a.take(dtype_, {M});
    emb_rstd_ = a.take(dtype_, {M});
    // Head buffers sized for every row masked; views use the first n rows.
    picked_ = a.take(dtype_, {M, C});
    tr_pre_ = a.take(dtype_, {M, C});
    tr_act_ = a.take(dtype_, {M, C});
    tr_out_ = a.take(dtype_, {M, C});
    tr_mean_ = a.take(dtype_, {M});
    tr_rstd_ = a.take(dtype_, {M});
    d_a_ = a.take(dtype_, {M, C});
    d_b_ = a.take(dtype_, {M, C});
    logits_ = a.take(dtype_, {M, spec_.vocab});
    losses_ = a.take(dtype_, {M});
    ids_ = a.take_ints({M});
    type_ids_ = a.take_ints({M});
    rows_ = a.take_ints({M});
    labels_ = a.take_ints({M});
  }

  ModelSpec spec_;
  Backend& be_;
  DType dtype_;
  int64_t batch_, seq_;
  ParamLayout layout_;
  BlockStack stack_;
  int head_layer_;
  ParamTensor tok_, pos_, type_, emb_g_, emb_b_, tr_w_, tr_b_, tr_g_, tr_beta_, dec_b_;
  Arena arena_;
  Tensor emb_sum_, d_emb_, emb_mean_, emb_rstd_;
  Tensor picked_, tr_pre_, tr_act_, tr_out_, tr_mean_, tr_rstd_, d_a_, d_b_, logits_, losses_;
  IntTensor ids_, type_ids_, rows_, labels_;
  std::vector<int32_t> host_rows_, host_labels_;
  uint64_t seed_ = 0;
  double grad_scale_ = 0;
};

}  // namespace

ParamLayout bert_layout(const ModelSpec& s, int64_t shard_multiple) {
  ParamLayout::Builder b;
  b.begin_layer("embeddings");
  b.add("embed.tokens", {s.vocab, s.hidden}, true, Init::normal, s.init_std);
  b.add("embed.positions", {s.max_positions, s.hidden}, true, Init::normal, s.init_std);
  b.add("embed.token_types", {s.type_vocab, s.hidden}, true, Init::normal, s.init_std);
  b.add("embed.norm.weight", {s.hidden}, false, Init::ones);
  b.add("embed.norm.bias", {s.hidden}, false, Init::zeros);
  for (int64_t l = 0; l < s.layers; ++l) {
    b.begin_layer("layers." + std::to_string(l));
    add_block_params(b, "layers." + std::to_string(l) + ".", bert_block(s), s.init_std, s.init_std);
  }
  b.begin_layer("head");
  b.add("mlm.transform.weight", {s.hidden, s.hidden}, true, Init::normal, s.init_std);
  b.add("mlm.transform.bias", {s.hidden}, false, Init::zeros);
  b.add("mlm.norm.weight", {s.hidden}, false, Init::ones);
  b.add("mlm.norm.bias", {s.hidden}, false, Init::zeros);
  b.add("mlm.decoder_bias", {s.vocab}, false, Init::zeros);
  return b.finish(shard_multiple);
}

std::unique_ptr<Model> make_bert(const ModelSpec& spec, Backend& backend, DType dtype,
                                 int64_t batch, int64_t seq, int64_t shard_multiple) {
  return std::make_unique<Bert>(spec, backend, dtype, batch, seq, shard_multiple);
}

}  // namespace mics::model
