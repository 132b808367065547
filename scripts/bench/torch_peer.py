#!/usr/bin/env python3
"""The PyTorch peer of mics-train's single-GPU benchmark (configs/bench/*.json).

By default it trains THE SAME MODEL as the engine, from the same config:
  BERT  token + position + token-type embeddings (every token type 0) and LayerNorm,
        post-LN encoder layers (erf GELU), the MLM head on the masked rows only (dense H x H,
        erf GELU, LayerNorm, decoder tied to the token embedding plus a decoder bias) and the
        mean cross-entropy over those rows; round(B*(S*p + (1-p)^S)) masked rows, the
        expectation of the engine's synthetic masking (data/batcher.cpp, p = data.mask_prob),
        corrupted 80% [MASK] / 10% random / 10% kept.
  GPT   token + position embeddings, pre-LN causal layers (tanh GELU), a final LayerNorm, the
        LM head tied to the token embedding over every token and next-token cross-entropy.
  Both: nn.TransformerEncoderLayer blocks, the engine's init (normal(init_std), GPT's residual
  projections / sqrt(2L)), dropout as model.dropout / model.attention_dropout say, AdamW with
  the config's lr, betas, eps and weight decay on the matrices and embeddings only (the engine's
  mask), grad clipping to train.grad_clip (when > 0), bf16 autocast, fused AdamW.

--layers-only keeps the earlier method, the one docs/references.md's numbers come from:
the layer stack alone on random activations, loss = output.float().square().mean(), AdamW
(lr 1e-4, weight decay 0.01 on everything), no clipping, dropout 0. A variant name may also
carry "+layers" ("compile+layers") to run that one variant this way.

Each variant prints one JSON line with the median step time and
  tflops        model FLOPs / step time: the count of engine/flops.cpp (the layers plus
                6*S*H*V per sample, docs/references.md's formula, BERT included) times the
                micro-batch, the number mics-train logs;
                in --layers-only mode the layers alone (tflops == layer_tflops)
  layer_tflops  the layers alone, B*L*(24*S*H^2 + 12*S*H*F + 12*S^2*H)
                (= 72*B*S*L*H^2*(1 + S/(6H)) for F = 4H)
Recompute (activation checkpointing) is never credited.

  python3 scripts/bench/torch_peer.py --config configs/bench/bert-10b-slice.json [--steps 25]
  python3 scripts/bench/torch_peer.py --config tiny.json --variants eager --device cpu
"""
import argparse
import contextlib
import inspect
import json
import math
import os
import re
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as ckpt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_check import bert_masked_rows, layer_flops, model_flops  # noqa: E402

# Features that differ between the GPU machine's PyTorch (2.x) and Debian's CPU 1.13.
HAS_IS_CAUSAL = "is_causal" in inspect.signature(nn.TransformerEncoderLayer.forward).parameters
HAS_FUSED_ADAMW = "fused" in inspect.signature(torch.optim.AdamW).parameters
HAS_CLIP_FOREACH = "foreach" in inspect.signature(torch.nn.utils.clip_grad_norm_).parameters
HAS_COMPILE = hasattr(torch, "compile")
HAS_DEVICE_CONTEXT = hasattr(torch.device, "__enter__")


def load_config(path):
    text = open(path).read()
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the engine's configs allow // comments
    return json.loads(text)


def settings(cfg):
    """The config with engine/config.cpp's defaults filled in (the keys the peer uses)."""
    m, t, d = cfg["model"], cfg["train"], cfg.get("data", {})
    bert = m["type"] == "bert"
    hidden = m["hidden"]
    s = {
        "bert": bert, "hidden": hidden, "heads": m["heads"], "layers": m["layers"],
        "ffn": m.get("ffn") or 4 * hidden, "vocab": m["vocab_size"],
        "max_positions": m.get("max_positions") or t["seq_len"],
        "type_vocab": m.get("type_vocab_size", -1), "eps": m.get("layernorm_eps") or (1e-12 if bert else 1e-5),
        "dropout": m.get("dropout", 0.0), "attention_dropout": m.get("attention_dropout", 0.0),
        "init_std": m.get("init_std", 0.02), "batch": t["micro_batch_size"], "seq": t["seq_len"],
        "lr": t["lr"], "weight_decay": t.get("weight_decay", 0.01),
        "betas": (t.get("adam_beta1", 0.9), t.get("adam_beta2", 0.999)), "adam_eps": t.get("adam_eps", 1e-8),
        "grad_clip": t.get("grad_clip", 1.0), "mask_prob": d.get("mask_prob", 0.15),
        "mask_token": d.get("mask_token_id", -1),
    }
    if s["type_vocab"] < 0:
        s["type_vocab"] = 2 if bert else 0
    if s["mask_token"] < 0:
        s["mask_token"] = s["vocab"] - 1
    return s


# ---- the earlier method (--layers-only): unchanged, so docs/references.md stays reproducible ----

class Stack(nn.Module):
    def __init__(self, hidden, heads, ffn, layers, pre_norm, checkpointing):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=pre_norm) for _ in range(layers))
        self.checkpointing = checkpointing

    def forward(self, x, mask):
        for layer in self.layers:
            if self.checkpointing:
                x = ckpt.checkpoint(layer, x, mask, use_reentrant=False)
            elif HAS_IS_CAUSAL:
                x = layer(x, src_mask=mask, is_causal=mask is not None)
            else:
                x = layer(x, src_mask=mask)
        return x


def layers_only_step_fn(cfg, checkpointing, device):
    m, t = cfg["model"], cfg["train"]
    hidden, heads, ffn, layers = m["hidden"], m["heads"], m.get("ffn", 4 * m["hidden"]), m["layers"]
    batch, seq = t["micro_batch_size"], t["seq_len"]
    gpt = m["type"] == "gpt"
    torch.manual_seed(0)
    model = Stack(hidden, heads, ffn, layers, gpt, checkpointing).to(device)
    opt = adamw(model.parameters(), 1e-4, device)
    x = torch.randn(batch, seq, hidden, device=device)
    mask = nn.Transformer.generate_square_subsequent_mask(seq, device=device) if gpt else None
    return model, opt, (lambda step_model: step_model(x, mask).float().square().mean()), 0.0


# ---- the engine's model ----

def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


class Blocks(nn.Module):
    """The engine's transformer blocks (model/transformer_block.cpp): qkv [3H, H] + bias,
    attention, projection, residual, LayerNorm, FFN H -> F -> H with GELU. Dropout on the
    attention probabilities and on both residual branches, none inside the FFN."""

    def __init__(self, s, pre_norm, gelu, checkpointing):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(s["layers"]):
            layer = nn.TransformerEncoderLayer(s["hidden"], s["heads"], s["ffn"], dropout=s["dropout"],
                                               activation=gelu, layer_norm_eps=s["eps"], batch_first=True,
                                               norm_first=pre_norm)
            layer.self_attn.dropout = s["attention_dropout"]
            layer.dropout = nn.Dropout(0.0)  # nn's dropout after the FFN activation: the engine has none
            self.layers.append(layer)
        self.checkpointing = checkpointing

    def forward(self, x, mask):
        # GPT: the causal mask plus is_causal, so that SDPA may take its causal kernels.
        causal = {"is_causal": True} if mask is not None and HAS_IS_CAUSAL else {}
        for layer in self.layers:
            if self.checkpointing:
                x = ckpt.checkpoint(layer, x, mask, use_reentrant=False, **causal)
            else:
                x = layer(x, src_mask=mask, **causal)
        return x


class BertPeer(nn.Module):
    """model/bert.cpp: embeddings + LayerNorm, post-LN blocks, MLM head on the masked rows."""

    def __init__(self, s, checkpointing):
        super().__init__()
        h = s["hidden"]
        self.tokens = nn.Embedding(s["vocab"], h)
        self.positions = nn.Embedding(s["max_positions"], h)
        self.token_types = nn.Embedding(s["type_vocab"], h)
        self.embed_norm = nn.LayerNorm(h, eps=s["eps"])
        self.embed_drop = nn.Dropout(s["dropout"])
        self.blocks = Blocks(s, pre_norm=False, gelu="gelu", checkpointing=checkpointing)
        self.transform = nn.Linear(h, h)
        self.transform_norm = nn.LayerNorm(h, eps=s["eps"])
        self.decoder_bias = nn.Parameter(torch.zeros(s["vocab"]))

    def forward(self, ids, type_ids, positions, rows, labels):
        x = self.tokens(ids) + self.positions(positions) + self.token_types(type_ids)
        x = self.embed_drop(self.embed_norm(x))
        x = self.blocks(x, None)
        picked = x.reshape(-1, x.shape[-1]).index_select(0, rows)
        picked = self.transform_norm(F.gelu(self.transform(picked)))
        logits = F.linear(picked, self.tokens.weight, self.decoder_bias)
        return F.cross_entropy(logits, labels)


class GptPeer(nn.Module):
    """model/gpt.cpp: embeddings, pre-LN causal blocks, final LayerNorm, tied LM head."""

    def __init__(self, s, checkpointing):
        super().__init__()
        h = s["hidden"]
        self.tokens = nn.Embedding(s["vocab"], h)
        self.positions = nn.Embedding(s["max_positions"], h)
        self.embed_drop = nn.Dropout(s["dropout"])
        self.blocks = Blocks(s, pre_norm=True, gelu=gelu_tanh, checkpointing=checkpointing)
        self.final_norm = nn.LayerNorm(h, eps=s["eps"])

    def forward(self, ids, positions, mask, labels):
        x = self.embed_drop(self.tokens(ids) + self.positions(positions))
        x = self.final_norm(self.blocks(x, mask))
        logits = F.linear(x, self.tokens.weight)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def engine_init(model, s, gpt):
    """The engine's init: matrices and embeddings normal(0, init_std), GPT's two residual
    projections per block normal(0, init_std / sqrt(2L)), biases 0, LayerNorm gains 1."""
    proj_std = s["init_std"] / math.sqrt(2.0 * s["layers"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                residual = name.endswith("self_attn.out_proj.weight") or name.endswith("linear2.weight")
                p.normal_(0.0, proj_std if gpt and residual else s["init_std"])
            elif name.endswith("bias"):
                p.zero_()
            # LayerNorm weights keep nn's ones


def adamw(params, lr, device, **kw):
    fused = {"fused": True} if HAS_FUSED_ADAMW and device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=lr, **kw, **fused)


def model_step_fn(cfg, checkpointing, device):
    s = settings(cfg)
    B, S, V = s["batch"], s["seq"], s["vocab"]
    torch.manual_seed(0)
    # Built straight on the device where torch can (2.x), so nn's init of ~1.5B parameters
    # does not run on the host first; then the engine's init, on the device.
    with device if HAS_DEVICE_CONTEXT else contextlib.nullcontext():
        model = (BertPeer if s["bert"] else GptPeer)(s, checkpointing)
    model = model.to(device)
    engine_init(model, s, not s["bert"])
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = adamw(groups, s["lr"], device, betas=s["betas"], eps=s["adam_eps"])
    g = torch.Generator().manual_seed(1)
    positions = torch.arange(S).expand(B, S).contiguous().to(device)
    if s["bert"]:
        bound = s["mask_token"]  # the engine's synthetic ids stay below the [MASK] id
        ids = torch.randint(0, bound, (B * S,), generator=g)
        n = max(1, round(bert_masked_rows(cfg)))
        rows = torch.randperm(B * S, generator=g)[:n].sort().values
        labels = ids[rows].clone()
        u = torch.rand(n, generator=g)
        corrupted = torch.where(u < 0.8, torch.full_like(labels, s["mask_token"]),
                                torch.where(u < 0.9, torch.randint(0, bound, (n,), generator=g), labels))
        ids[rows] = corrupted
        args = [ids.view(B, S), torch.zeros(B, S, dtype=torch.long), positions, rows, labels]
        extra = {"masked_rows": n}
    else:
        window = torch.randint(0, V, (B, S + 1), generator=g)
        mask = nn.Transformer.generate_square_subsequent_mask(S).to(device)
        args = [window[:, :-1].contiguous(), positions, mask, window[:, 1:].contiguous()]
        extra = {}
    args = [a.to(device) for a in args]
    return model, opt, (lambda step_model: step_model(*args)), s["grad_clip"], extra


def run(cfg, compiled, checkpointing, layers_only, steps, warmup, device, precision):
    if compiled and not HAS_COMPILE:
        raise SystemExit(f"torch {torch.__version__} has no torch.compile")
    if layers_only:
        model, opt, loss_of, clip = layers_only_step_fn(cfg, checkpointing, device)
        extra = {}
    else:
        model, opt, loss_of, clip, extra = model_step_fn(cfg, checkpointing, device)
    params = [p for p in model.parameters()]
    step_model = torch.compile(model) if compiled else model
    cuda = device.type == "cuda"
    amp = precision == "bf16"
    clip_kw = {"foreach": True} if HAS_CLIP_FOREACH else {}
    times, losses = [], []
    for i in range(warmup + steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(step_model)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm=clip, **clip_kw)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        losses.append(loss.detach())
        if i >= warmup:
            times.append(elapsed)
    t_step = statistics.median(times)
    layers = layer_flops(cfg)
    full = layers if layers_only else model_flops(cfg)
    r = {"peer": "pytorch", "torch": torch.__version__, "model": "layers-only" if layers_only else "full",
         "compiled": compiled, "checkpointing": checkpointing, "precision": precision, "step_s": t_step,
         "tflops": full / t_step / 1e12, "layer_tflops": layers / t_step / 1e12}
    r.update(extra)
    r["losses"] = [round(float(x), 4) for x in losses]
    del model, opt, step_model, params
    if cuda:
        torch.cuda.empty_cache()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="eager,compile,eager+ckpt,compile+ckpt",
                    help="comma-separated: eager | compile, each optionally +ckpt and/or +layers")
    ap.add_argument("--layers-only", action="store_true",
                    help="the earlier method (docs/references.md): the layer stack alone, square-mean loss")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="bf16 autocast or fp32; auto: bf16 on CUDA, fp32 elsewhere")
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type == "cpu" and int(torch.__version__.split(".")[0]) < 2:
        # 1.13's CPU autocast runs layer_norm in bf16 against fp32 weights and fails (BERT's head).
        raise SystemExit(f"bf16 autocast on the CPU needs torch 2 (this is {torch.__version__}); use --precision fp32")
    cfg = load_config(args.config)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    failed = 0
    for v in args.variants.split(","):
        # One variant failing (a torch.compile regression, memory) must not cost the others.
        try:
            r = run(cfg, "compile" in v, "ckpt" in v, args.layers_only or "layers" in v, args.steps, args.warmup,
                    device, precision)
        except Exception as e:  # noqa: BLE001 - reported and counted, the exit code says so
            failed += 1
            print(f"torch_peer: variant {v} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        r.update({"config": args.config, "variant": v, "gpu": gpu})
        print(json.dumps(r), flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
