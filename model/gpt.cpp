// GPT (GPT-2 architecture): learned positions, pre-LN causal blocks with tanh GELU, a
// final LayerNorm and an LM head tied to the token embedding, next-token loss.
#include <cmath>
#include <vector>

#include "model/architectures.h"
#include "model/block_stack.h"

namespace mics::model {

namespace {

BlockShape gpt_block(const ModelSpec& s) {
  return BlockShape{s.hidden, s.heads, s.ffn, /*pre_norm=*/true, /*causal=*/true, GeluKind::tanh,
                    s.layernorm_eps, s.dropout, s.attention_dropout, s.activation_checkpointing,
                    s.fused_attention};
}

class Gpt final : public Model {
 public:
  Gpt(const ModelSpec& spec, Backend& backend, DType dtype, int64_t batch, int64_t seq,
      int64_t shard_multiple)
      : spec_(spec), be_(backend), dtype_(dtype), batch_(batch), seq_(seq),
        layout_(gpt_layout(spec, shard_multiple)),
        stack_(backend, gpt_block(spec), layout_, spec.layers, batch, seq, "layers."),
        head_layer_(static_cast<int>(spec.layers) + 1),
        tok_(layout_.at("embed.tokens")), pos_(layout_.at("embed.positions")),
        norm_g_(layout_.at("final_norm.weight")), norm_b_(layout_.at("final_norm.bias")) {
    Arena measure;
    allocate(measure);
    arena_ = Arena(backend, measure.used());
    allocate(arena_);
  }

  const ParamLayout& layout() const override { return layout_; }
  const ModelSpec& spec() const override { return spec_; }
  size_t activation_bytes() const override { return arena_.used(); }

  double forward(ParamProvider& params, const TokenBatch& batch, uint64_t seed,
                 double grad_scale) override {
    check_batch_shape("GPT", batch, batch_, seq_);
    seed_ = seed;
    grad_scale_ = grad_scale;
    be_.copy_from_host(ids_.data, batch.tokens, sizeof(int32_t) * static_cast<size_t>(rows()));
    be_.copy_from_host(labels_.data, batch.labels, sizeof(int32_t) * static_cast<size_t>(rows()));
    valid_ = 0;
    for (int64_t i = 0; i < rows(); ++i) valid_ += batch.labels[i] >= 0;

    Tensor emb = params.acquire_params(0);
    be_.embedding_forward(stack_.input(), ids_, IntTensor{}, ref(emb, tok_), ref(emb, pos_),
                          Tensor{}, seq_);
    params.release_params(0);
    const DropoutSpec drop = embedding_dropout();
    if (drop.enabled()) be_.dropout_forward(stack_.input(), stack_.input(), drop);

    stack_.forward(params, seed);

    Tensor head = params.acquire_params(head_layer_);
    be_.layernorm_forward(final_, mean_, rstd_, stack_.output(), ref(head, norm_g_),
                          ref(head, norm_b_), static_cast<float>(spec_.layernorm_eps));
    Tensor wte = ref(params.acquire_params(0), tok_);
    be_.linear_forward(logits_, final_, wte, Tensor{});
    const bool want_grad = grad_scale > 0 && valid_ > 0;
    be_.cross_entropy(losses_, want_grad ? logits_ : Tensor{}, logits_, labels_,
                      want_grad ? grad_scale / static_cast<double>(valid_) : 0.0);
    params.release_params(0);
    params.release_params(head_layer_);
    return valid_ > 0 ? be_.sum(losses_) / static_cast<double>(valid_) : 0.0;
  }

  void backward(ParamProvider& params) override {
    if (grad_scale_ <= 0) throw std::logic_error("Gpt::backward without a forward that formed gradients");
    Tensor head = params.acquire_params(head_layer_);
    const GradBuffer head_buffer = params.grad_buffer(head_layer_);
    const GradBuffer emb_buffer = params.grad_buffer(0);
    const Tensor head_grad = head_buffer.grads, emb_grad = emb_buffer.grads;
    // A fresh buffer (a step's first micro-step with gradients in place): the LM head writes
    // the token table's gradient (=), which the embedding's backward adds to; the final
    // LayerNorm writes its own; the positions, which only the embedding adds to, are zeroed.
    if (valid_ > 0) {
      Tensor wte = ref(params.acquire_params(0), tok_);
      be_.linear_backward(d_final_, ref(emb_grad, tok_), Tensor{}, logits_, final_, wte,
                          Accumulate::no, emb_buffer.fresh ? Accumulate::no : Accumulate::yes);
      params.release_params(0);
    } else {
      be_.fill_zero(d_final_);
      if (emb_buffer.fresh) be_.fill_zero(ref(emb_grad, tok_));
    }
    if (emb_buffer.fresh) be_.fill_zero(ref(emb_grad, pos_));
    be_.layernorm_backward(stack_.grad(), ref(head_grad, norm_g_), ref(head_grad, norm_b_),
                           d_final_, stack_.output(), ref(head, norm_g_), mean_, rstd_,
                           Accumulate::no, head_buffer.fresh ? Accumulate::no : Accumulate::yes);
    params.release_params(head_layer_);
    params.grads_ready(head_layer_);

    stack_.backward(params, seed_);

    const DropoutSpec drop = embedding_dropout();
    if (drop.enabled()) be_.dropout_backward(stack_.grad(), stack_.grad(), drop);
    be_.embedding_backward(ref(emb_grad, tok_), ref(emb_grad, pos_), Tensor{}, stack_.grad(), ids_,
                           IntTensor{}, seq_);
    params.grads_ready(0);
  }

 private:
  int64_t rows() const { return batch_ * seq_; }
  static Tensor ref(Tensor span, const ParamTensor& t) { return param_view(span, t); }
  DropoutSpec embedding_dropout() const { return model::embedding_dropout(spec_.dropout, seed_); }
  void allocate(Arena& a) {
    const int64_t M = rows(), C = spec_.hidden;
    stack_.allocate(a, dtype_);
    final_ = a.take(dtype_, {M, C});
    d_final_ = a.take(dtype_, {M, C});
    mean_ = a.take(dtype_, {M});
    rstd_ = a.take(dtype_, {M});
    logits_ = a.take(dtype_, {M, spec_.vocab});
    losses_ = a.take(dtype_, {M});
    ids_ = a.take_ints({M});
    labels_ = a.take_ints({M});
  }

  ModelSpec spec_;
  Backend& be_;
  DType dtype_;
  int64_t batch_, seq_;
  ParamLayout layout_;
  BlockStack stack_;
  int head_layer_;
  ParamTensor tok_, pos_, norm_g_, norm_b_;
  Arena arena_;
  Tensor final_, d_final_, mean_, rstd_, logits_, losses_;
  IntTensor ids_, labels_;
  uint64_t seed_ = 0;
  double grad_scale_ = 0;
  int64_t valid_ = 0;
};

}  // namespace

ParamLayout gpt_layout(const ModelSpec& s, int64_t shard_multiple) {
  ParamLayout::Builder b;
  b.begin_layer("embeddings");
  b.add("embed.tokens", {s.vocab, s.hidden}, true, Init::normal, s.init_std);
  b.add("embed.positions", {s.max_positions, s.hidden}, true, Init::normal, s.init_std);
  // GPT-2 scales the projections into the residual stream by 1/sqrt(2L).
  const double proj_std = s.init_std / std::sqrt(2.0 * static_cast<double>(s.layers));
  for (int64_t l = 0; l < s.layers; ++l) {
    b.begin_layer("layers." + std::to_string(l));
    add_block_params(b, "layers." + std::to_string(l) + ".", gpt_block(s), s.init_std, proj_std);
  }
  b.begin_layer("head");
  b.add("final_norm.weight", {s.hidden}, false, Init::ones);
  b.add("final_norm.bias", {s.hidden}, false, Init::zeros);
  return b.finish(shard_multiple);
}

std::unique_ptr<Model> make_gpt(const ModelSpec& spec, Backend& backend, DType dtype,
                                int64_t batch, int64_t seq, int64_t shard_multiple) {
  return std::make_unique<Gpt>(spec, backend, dtype, batch, seq, shard_multiple);
}

}  // namespace mics::model
