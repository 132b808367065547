#!/usr/bin/env python3
"""mics-train against Hugging Face transformers itself.

For a tiny BERT and a tiny GPT: train a few steps with mics-train, export the checkpoint
with `mics-train export --format hf`, load the folder with BertForMaskedLM /
GPT2LMHeadModel.from_pretrained, and evaluate the same samples both ways, one at a time:

- mics-train: --init-from the exported folder, one step per sample (global batch 1) over
  an llm.c token shard written here (shuffle off), with an LR too small to change any fp32
  weight (checked: the weights export byte-identical afterwards); each step's loss and
  pre-clip gradient norm come from --metrics;
- transformers: each sample in float64, its loss and the gradient norm over every
  parameter (tied weights counted once, as in our flat buffer).

Per sample rather than the batch mean, so that differences do not average away; the
gradient norm makes this a check of the backward pass as well as the forward one.

Also --init-from on folders that transformers' save_pretrained wrote itself: the run's own
model (config.json with transformers' keys and defaults) is taken; an untied output head
or a config.json of another model (heads, activation) is refused, naming it. And the
exported config's token ids lie inside the vocabulary.
BERT's masking is done by our batcher (data/batcher.cpp); it is reproduced here bit for
bit from data/counter_rng.h, so both sides see the same corrupted input and labels.

Usage: hf_numerics.py MICS_TRAIN SOURCE_DIR. Exit 77 (skip) without torch/transformers.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
except ImportError as e:  # the suite runs without them; scripts/setup.sh installs them
    print(f"SKIP: {e} (scripts/setup.sh installs python3-torch and transformers)")
    sys.exit(77)

# The engine computes in fp32, transformers here in float64 from the same fp32 weights, so
# the difference is the engine's rounding alone. Its scale is that of one fp32 dot product
# of K terms, u*sqrt(K) with u = 2^-24 and K up to the FFN width 4H = 256: 16u = 9.5e-7.
# A loss or a gradient norm is a reduction over many such values whose errors partly
# cancel, so both land below it (measured 2026-11-25: at most 7.5e-8, the same as
# transformers' own fp32 forward and backward). For scale, the tanh GELU in BERT gives
# 2e-5 here and GPT's LayerNorm eps 1e-6 for 1e-5 gives 4e-6: formula slips this small
# are the reason not to loosen it.
U32 = 2.0 ** -24
REL_TOL = 16 * U32

SEQ, BATCH, HIDDEN, LAYERS, HEADS = 32, 8, 64, 2, 4
SEED = 1234
TRAIN_STEPS = 30


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}:\n{r.stdout}")
    return r.stdout


def run_rc(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout


def write_shard(path, tokens):
    """llm.c .bin: 256 little-endian int32 header (magic, version, count), then uint16 tokens."""
    header = [20240520, 1, len(tokens)] + [0] * 253
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens))


# --- data/counter_rng.h and data/batcher.cpp, transcribed -------------------------------
M64 = (1 << 64) - 1


def mix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def counter_hash(stream, a, b):
    return mix64(mix64(mix64(stream) ^ a) ^ b)


def unit_double(h):
    return (h >> 11) * 2.0 ** -53


def below(h, bound):
    return ((h >> 32) * bound) >> 32


def bert_mask(tokens, sample, seed, mask_prob, mask_token, random_bound):
    """Batcher::fill for one masked-LM sample: (corrupted tokens, labels with -100 ignored)."""
    stream = seed ^ 0x6D61736B  # kMaskStream, "mask"
    tokens, labels = list(tokens), [-100] * len(tokens)

    def corrupt(p, h):
        labels[p] = tokens[p]
        choice = mix64(h)
        u = unit_double(choice)
        if u < 0.8:
            tokens[p] = mask_token
        elif u < 0.9:
            tokens[p] = below(mix64(choice), random_bound)

    picked = False
    for p in range(len(tokens)):
        h = counter_hash(stream, sample, p)
        if unit_double(h) < mask_prob:
            corrupt(p, h)
            picked = True
    if not picked:
        p = below(counter_hash(stream, sample, len(tokens)), len(tokens))
        corrupt(p, counter_hash(stream, sample, p))
    return tokens, labels


# --- the two sides ------------------------------------------------------------------------
def mics_eval(bin_path, config_args, hf_dir, shard, work):
    """(loss, grad_norm) of samples 0..BATCH-1, one optimizer step each."""
    metrics = os.path.join(work, "eval.jsonl")
    ckpt = os.path.join(work, "ck-eval")
    run([bin_path, *config_args, "--init-from", hf_dir, "--steps", str(BATCH), "--metrics", metrics,
         "--set", "log.every=1", "--set", f"checkpoint.dir={ckpt}",
         "--set", "data.source=shards", "--set", f"data.path={shard}", "--set", "data.shuffle=false",
         "--set", "train.micro_batch_size=1", "--set", "train.global_batch_size=1",
         # Adam's first steps move each weight by about lr: 1e-30 is below half an ulp of
         # every weight that is not itself tiny, so every step sees the exported weights.
         "--set", "train.lr=1e-30", "--set", "train.min_lr=0", "--set", "train.warmup_steps=0",
         "--set", "train.weight_decay=0"])
    again = os.path.join(work, "again.safetensors")
    run([bin_path, "export", "--checkpoint", os.path.join(ckpt, f"step-{BATCH:06d}"), "--out", again])
    with open(again, "rb") as f1, open(os.path.join(hf_dir, "model.safetensors"), "rb") as f2:
        if f1.read() != f2.read():
            sys.exit("FAIL: the evaluation steps changed the weights; lower their train.lr")
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if [r["step"] for r in rows] != list(range(1, BATCH + 1)):
        sys.exit(f"FAIL: expected one metrics row per step in {metrics}, got steps {[r['step'] for r in rows]}")
    return [(r["loss"], r["grad_norm"]) for r in rows]


def hf_eval(model, input_ids, targets):
    """(loss, grad_norm) of one sample through transformers."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids[None, :]).logits[0]
    # Our GPT predicts every one of the T positions from its (T+1)-token window; HF's
    # built-in shift would drop the last, so the loss is formed here, as for BERT's
    # labels (-100 ignored, mean over the rest, as BertForMaskedLM does).
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    norm2 = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None)
    return float(loss), math.sqrt(norm2)


def check_model(kind, bin_path, source_dir, text, work):
    config = os.path.join(source_dir, "configs", f"{kind}-tiny.json")
    config_args = ["--config", config, "--log-level", "warn",
                   "--set", f"train.seq_len={SEQ}", "--set", f"model.max_positions={SEQ}",
                   "--set", f"model.hidden={HIDDEN}", "--set", f"model.layers={LAYERS}",
                   "--set", f"model.heads={HEADS}", "--set", "model.dropout=0",
                   "--set", "model.attention_dropout=0", "--set", f"train.seed={SEED}"]
    # Trained, so LayerNorm gains, biases and the decoder bias are no longer 1 or 0 and a
    # swapped or dropped tensor shows; a high LR moves them far in few steps.
    ckpt = os.path.join(work, "ck")
    run([bin_path, *config_args, "--steps", str(TRAIN_STEPS), "--set", "train.lr=1e-2",
         "--set", "train.warmup_steps=0", "--set", f"checkpoint.dir={ckpt}"])
    hf_dir = os.path.join(work, "hf")
    run([bin_path, "export", "--checkpoint", os.path.join(ckpt, f"step-{TRAIN_STEPS:06d}"), "--out", hf_dir,
         "--format", "hf"])

    causal = kind == "gpt"
    window = SEQ + 1 if causal else SEQ
    tokens = list(text[: window * BATCH])
    shard = os.path.join(work, "eval.bin")
    write_shard(shard, tokens)
    ours = mics_eval(bin_path, config_args, hf_dir, shard, work)

    cls = GPT2LMHeadModel if causal else BertForMaskedLM
    model, info = cls.from_pretrained(hf_dir, output_loading_info=True)
    for what in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info[what]:
            sys.exit(f"FAIL: {kind}: from_pretrained({hf_dir}) reports {what}: {info[what]}")
    ids = {"bos_token_id", "eos_token_id", "pad_token_id"}
    outside = {k: getattr(model.config, k) for k in ids
               if getattr(model.config, k, None) is not None and not 0 <= getattr(model.config, k) < model.config.vocab_size}
    if outside:
        sys.exit(f"FAIL: {kind}: the exported config's {outside} lie outside vocab_size {model.config.vocab_size}")
    model64 = model.double().eval()
    # The same weights through transformers in fp32: the size of fp32 rounding in an
    # independent implementation, printed for scale.
    model32 = cls.from_pretrained(hf_dir).float().eval()

    # config: data.mask_token_id, else vocab_size - 1; the batcher draws random
    # replacements below the data's largest token + 1.
    with open(config) as f:
        mask_token = json.load(f)["data"].get("mask_token_id", model.config.vocab_size - 1)
    worst = {"loss": (0.0, 0.0), "grad_norm": (0.0, 0.0)}
    ok = True
    for s in range(BATCH):
        w = tokens[s * window:(s + 1) * window]
        if causal:
            inputs, targets = w[:SEQ], w[1:]
        else:
            inputs, targets = bert_mask(w, s, SEED, 0.15, mask_token, max(tokens) + 1)
        inputs, targets = torch.tensor(inputs), torch.tensor(targets)
        ref = hf_eval(model64, inputs, targets)
        ref32 = hf_eval(model32, inputs, targets)
        for i, name in enumerate(("loss", "grad_norm")):
            rel = abs(ours[s][i] - ref[i]) / abs(ref[i])
            rel32 = abs(ref32[i] - ref[i]) / abs(ref[i])
            worst[name] = (max(worst[name][0], rel), max(worst[name][1], rel32))
            if rel > REL_TOL:
                ok = False
                print(f"FAIL: {kind} sample {s} {name}: mics-train {ours[s][i]:.10f}, transformers (fp64) "
                      f"{ref[i]:.10f}, relative difference {rel:.3e} > {REL_TOL:.1e}")
    for name, (rel, rel32) in worst.items():
        print(f"{kind:4s} {name:9s} over {BATCH} samples: max relative difference to transformers fp64 "
              f"{rel:.3e} (tolerance {REL_TOL:.1e}; transformers' own fp32: {rel32:.3e})")
    return ok


def model_args(kind, source_dir):
    return ["--config", os.path.join(source_dir, "configs", f"{kind}-tiny.json"), "--log-level", "warn",
            "--set", f"train.seq_len={SEQ}", "--set", f"model.max_positions={SEQ}",
            "--set", f"model.hidden={HIDDEN}", "--set", f"model.layers={LAYERS}",
            "--set", f"model.heads={HEADS}", "--steps", "1", "--set", "train.global_batch_size=8"]


def check_transformers_files(bin_path, source_dir, work):
    """--init-from folders written by save_pretrained: (kind, config changes, untie the
    head?, what a refusal must name, or None where it must be taken)."""
    cases = [("gpt", {}, False, None),
             ("gpt", {"tie_word_embeddings": False}, True, "'lm_head.weight', which differs"),
             ("gpt", {"n_head": 2}, False, "'n_head' is 2; this run's 'model.heads' is 4"),
             ("gpt", {"layer_norm_epsilon": 1e-6}, False, "'layer_norm_epsilon' is 1e-06"),
             ("bert", {}, False, None),
             ("bert", {"tie_word_embeddings": False}, True, "'cls.predictions.decoder.weight', which differs"),
             ("bert", {"hidden_act": "relu"}, False, "'hidden_act' is \"relu\"")]
    ok = True
    for i, (kind, changes, untie, refusal) in enumerate(cases):
        torch.manual_seed(i)
        if kind == "gpt":
            config = GPT2Config(**{"vocab_size": 256, "n_positions": SEQ, "n_embd": HIDDEN, "n_layer": LAYERS,
                                   "n_head": HEADS, **changes})
            model = GPT2LMHeadModel(config)
            head = model.lm_head.weight
        else:
            config = BertConfig(**{"vocab_size": 260, "max_position_embeddings": SEQ, "hidden_size": HIDDEN,
                                   "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                                   "intermediate_size": 4 * HIDDEN, **changes})
            model = BertForMaskedLM(config)
            head = model.cls.predictions.decoder.weight
        if untie:
            with torch.no_grad():
                head.normal_()
        folder = os.path.join(work, f"saved-{i}")
        model.save_pretrained(folder, safe_serialization=True)
        rc, out = run_rc([bin_path, *model_args(kind, source_dir), "--init-from", folder])
        taken = refusal is None and rc == 0
        refused = refusal is not None and rc == 2 and refusal in out and out.count("\n") == 1
        print(f"{kind:4s} save_pretrained {changes or 'as the run'}: exit {rc}")
        if not (taken or refused):
            ok = False
            print(f"FAIL: {kind} {changes}: expected " + ("exit 0" if refusal is None else f"exit 2 naming {refusal!r}") +
                  f", got exit {rc}:\n{out}")
    return ok


def main():
    bin_path, source_dir = sys.argv[1], sys.argv[2]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    with open(os.path.join(source_dir, "README.md"), "rb") as f:
        text = f.read()  # bytes 0..255 as tokens, as data.source "text" would
    ok = True
    for kind in ("gpt", "bert"):
        with tempfile.TemporaryDirectory(prefix=f"mics-hf-{kind}-") as work:
            ok &= check_model(kind, bin_path, source_dir, text, work)
    with tempfile.TemporaryDirectory(prefix="mics-hf-saved-") as work:
        ok &= check_transformers_files(bin_path, source_dir, work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
