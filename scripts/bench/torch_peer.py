#!/usr/bin/env python3
"""The PyTorch peer of mics-train's single-GPU benchmark: the same layer shapes as
configs/bench/*.json built from nn.TransformerEncoderLayer (post-LN for BERT, pre-LN and
causal for GPT-2), bf16 autocast, fused AdamW, optionally torch.compile and per-layer
activation checkpointing. Prints one JSON line per variant with the median step time and
model TFLOP/s = 72*B*S*L*H^2*(1 + S/(6H)) / t (layers only, no recompute credited), the
method of ../shared/REFERENCES.md.

  python3 scripts/bench/torch_peer.py --config configs/bench/bert-10b-slice.json [--steps 25]
"""
import argparse
import json
import re
import statistics

import torch
import torch.nn as nn
import torch.utils.checkpoint as ckpt


def load_config(path):
    text = open(path).read()
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the engine's configs allow // comments
    return json.loads(text)


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
            else:
                x = layer(x, src_mask=mask, is_causal=mask is not None)
        return x


def run(cfg, compiled, checkpointing, steps, warmup):
    m, t = cfg["model"], cfg["train"]
    hidden, heads, ffn, layers = m["hidden"], m["heads"], m.get("ffn", 4 * m["hidden"]), m["layers"]
    batch, seq = t["micro_batch_size"], t["seq_len"]
    gpt = m["type"] == "gpt"
    torch.manual_seed(0)
    model = Stack(hidden, heads, ffn, layers, gpt, checkpointing).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if compiled else model
    x = torch.randn(batch, seq, hidden, device="cuda")
    mask = nn.Transformer.generate_square_subsequent_mask(seq, device="cuda") if gpt else None
    times = []
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x, mask).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1e3)
    t_step = statistics.median(times)
    flops = 72.0 * batch * seq * layers * hidden ** 2 * (1 + seq / (6.0 * hidden))
    del model, opt, step_model
    torch.cuda.empty_cache()
    return {"peer": "pytorch", "torch": torch.__version__, "compiled": compiled, "checkpointing": checkpointing,
            "step_s": t_step, "tflops": flops / t_step / 1e12}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="eager,compile,eager+ckpt,compile+ckpt")
    args = ap.parse_args()
    cfg = load_config(args.config)
    for v in args.variants.split(","):
        r = run(cfg, "compile" in v, "ckpt" in v, args.steps, args.warmup)
        r.update({"config": args.config, "variant": v, "gpu": torch.cuda.get_device_name()})
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
