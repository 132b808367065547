#!/usr/bin/env python3
"""The whole GPU check in one go (scripts/gpu-check.sh runs this on the GPU machine):

  checks  the CUDA tests; tiny BERT and GPT trained 50 steps on CUDA against the CPU
          backend (fp32 within 1e-4 relative, bf16 and fp16 within 2e-2); 4 ranks on the one
          GPU (staged communicator) against 1 rank in fp32 within 1e-4; one rank over NCCL;
          fp16 from a loss scale of 2^32 (overflows skipped, scale halved, then training) and
          its resume from a checkpoint, bit for bit.
  profile each slice with --profile: time per op (not part of the default run)
  bench   configs/bench/*-slice.json with and without activation checkpointing, 9 steps
          after 1 of warm-up, TFLOP/s per GPU (model FLOPs of the layers, as the peer
          counts them) and MFU; the PyTorch peer of the same shapes in the same call.

Writes OUT/gpu-results.md (OUT: $OUT, else docs/) and OUT/gpu-results.json.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_BF16 = {"H100": 989.0, "H200": 989.0}  # dense bf16 TFLOP/s, datasheet (REFERENCES.md)


def sh(cmd, env=None, timeout=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def card():
    code, text = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return text.strip().splitlines()[0] if code == 0 else "unknown"


def losses(path):
    return [json.loads(line)["loss"] for line in open(path)]


def train(binary, config, metrics, sets, env, ranks=1, timeout=600, extra=()):
    cmd = [binary, "--config", config, "--metrics", metrics, "--log-level", "warn", "--set", "log.every=1", *extra]
    for s in sets:
        cmd += ["--set", s]
    if ranks > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + cmd
    if os.path.exists(metrics):
        os.remove(metrics)
    code, text = sh(cmd, env=env, timeout=timeout)
    return code, text


def max_rel(a, b):
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def checks(bindir, work, env, rows):
    for test in ("test_cuda_ops", "test_cuda_model"):
        code, text = sh([os.path.join(bindir, test), "--gtest_brief=1"], env=env, timeout=900)
        passed = re.search(r"\[  PASSED  \] (\d+) test", text)
        failed = re.findall(r"\[  FAILED  \] (\S+)", text)
        rows.append({"check": test, "ok": code == 0,
                     "detail": f"{passed.group(1) if passed else 0} passed, {len(set(failed))} failed"
                               + (": " + ", ".join(sorted(set(failed))[:8]) if failed else "")})
        print(text[-3000:] if code else f"{test}: ok", flush=True)
    mt = os.path.join(bindir, "mics-train")
    tiny = ["train.steps=50", "data.source=\"synthetic\"", "data.path=\"\"", "train.global_batch_size=16",
            "train.micro_batch_size=8"]
    for model in ("bert", "gpt"):
        config = os.path.join(ROOT, "configs", f"{model}-tiny.json")
        ref = os.path.join(work, f"{model}-cpu.jsonl")
        code, text = train(mt, config, ref, tiny + ["runtime.backend=\"cpu\""], env)
        if code != 0:
            rows.append({"check": f"{model}-tiny CPU fp32", "ok": False, "detail": text[-300:]})
            continue
        for precision, tol in (("fp32", 1e-4), ("bf16", 2e-2), ("fp16", 2e-2)):
            m = os.path.join(work, f"{model}-cuda-{precision}.jsonl")
            code, text = train(mt, config, m, tiny + ["runtime.backend=\"cuda\"", f"train.precision=\"{precision}\""], env)
            d = max_rel(losses(m), losses(ref)) if code == 0 else float("inf")
            rows.append({"check": f"{model}-tiny 50 steps, CUDA {precision} vs CPU fp32", "ok": d <= tol,
                         "detail": f"max relative loss difference {d:.2e} (limit {tol:g})" if code == 0 else text[-300:]})
        # Fused attention (runtime.attention "fused": bf16/fp16, head dim 64 or 128, so 2 heads
        # of 64 here) against the materialised path, both on CUDA in bf16.
        heads = tiny + ["runtime.backend=\"cuda\"", "train.precision=\"bf16\"", "model.heads=2"]
        runs = {}
        for attention in ("materialized", "fused"):
            m = os.path.join(work, f"{model}-{attention}.jsonl")
            runs[attention] = train(mt, config, m, heads + [f"runtime.attention=\"{attention}\""], env) + (m,)
        ok = all(r[0] == 0 for r in runs.values())
        d = max_rel(losses(runs["fused"][2]), losses(runs["materialized"][2])) if ok else float("inf")
        rows.append({"check": f"{model}-tiny (2 heads of 64) 50 steps bf16, fused vs materialised attention",
                     "ok": d <= 2e-2,
                     "detail": f"max relative loss difference {d:.2e} (limit 2e-2)" if ok
                               else next(r[1] for r in runs.values() if r[0] != 0)[-400:]})
    # Several ranks on the one GPU: staged communicator against one rank, fp32.
    config = os.path.join(ROOT, "configs", "gpt-tiny.json")
    base = tiny + ["runtime.backend=\"cuda\"", "train.precision=\"fp32\"", "train.micro_batch_size=4",
                   "train.global_batch_size=16"]
    one = os.path.join(work, "one-rank.jsonl")
    code, text = train(mt, config, one, base, env)
    for label, extra in (("p=4, k=2, hierarchical", ["mics.partition_size=4", "mics.hierarchical_allgather=true"]),
                         ("p=2, k=2", ["mics.partition_size=2"])):
        m = os.path.join(work, "four-" + label.replace(" ", "").replace(",", "_").replace("=", "") + ".jsonl")
        c4, t4 = train(mt, config, m, base + ["runtime.ranks_per_node=2", "runtime.communicator=\"staged\""] + extra,
                       env, ranks=4)
        d = max_rel(losses(m), losses(one)) if c4 == 0 and code == 0 else float("inf")
        rows.append({"check": f"4 ranks on one GPU ({label}, staged) vs 1 rank, fp32", "ok": d <= 1e-4,
                     "detail": f"max relative loss difference {d:.2e} (limit 1e-4)" if c4 == 0 else t4[-400:]})
    # The all-reduce across replicas in bf16 (mics.replication_dtype compute) against fp32: p = 2, r = 2.
    two = base[:] + ["runtime.ranks_per_node=2", "runtime.communicator=\"staged\"", "mics.partition_size=2",
                     "train.precision=\"bf16\""]
    runs = {}
    for rd in ("fp32", "compute"):
        m = os.path.join(work, f"replication-{rd}.jsonl")
        runs[rd] = train(mt, config, m, two + [f"mics.replication_dtype=\"{rd}\""], env, ranks=4) + (m,)
    ok = all(r[0] == 0 for r in runs.values())
    d = max_rel(losses(runs["compute"][2]), losses(runs["fp32"][2])) if ok else float("inf")
    rows.append({"check": "4 ranks, p=2, bf16: replication all-reduce in bf16 vs fp32", "ok": d <= 2e-2,
                 "detail": f"max relative loss difference {d:.2e} (limit 2e-2)" if ok
                           else next(r[1] for r in runs.values() if r[0] != 0)[-400:]})
    m = os.path.join(work, "nccl.jsonl")
    c1, t1 = train(mt, config, m, base + ["runtime.communicator=\"nccl\""], env)
    d = max_rel(losses(m), losses(one)) if c1 == 0 and code == 0 else float("inf")
    rows.append({"check": "1 rank over NCCL vs the same without, fp32", "ok": d == 0.0,
                 "detail": f"max relative loss difference {d:.2e}" if c1 == 0 else t1[-400:]})
    fp16_overflow_and_resume(mt, config, work, env, tiny, rows)
    # BERT 10B on one GPU at p = 1 (16 bytes per parameter: 150 GiB): refused at start, by name.
    code, text = train(mt, os.path.join(ROOT, "configs", "bert-10b.json"), os.path.join(work, "big.jsonl"),
                       ["mics.partition_size=1", "train.steps=1"], env, timeout=300)
    ok = code == 2 and "this configuration plans" in text and "'mics.partition_size'" in text
    line = next((l for l in text.splitlines() if "error" in l), text[-300:])
    rows.append({"check": "BERT 10B at p=1 on one GPU is refused before allocating", "ok": ok,
                 "detail": f"exit {code}: {line[:300]}"})


def fp16_overflow_and_resume(mt, config, work, env, tiny, rows):
    """fp16 from a loss scale of 2^32: the first steps overflow, are skipped and halve the
    scale; training then proceeds. A resume from the step-25 checkpoint must continue
    exactly like the uninterrupted run (the scale is part of the checkpoint)."""
    ck = os.path.join(work, "fp16-ck")
    sets = tiny + ["runtime.backend=\"cuda\"", "train.precision=\"fp16\"", "train.initial_loss_scale=4294967296",
                   "train.steps=35", f"checkpoint.dir=\"{ck}\"", "checkpoint.every=25"]
    full = os.path.join(work, "fp16-full.jsonl")
    code, text = train(mt, config, full, sets, env)
    if code != 0:
        rows.append({"check": "fp16 overflow skips, then trains", "ok": False, "detail": text[-400:]})
        return
    m = [json.loads(line) for line in open(full)]
    skipped = [r["step"] for r in m if r["skipped"]]
    halves = all(b["loss_scale"] == a["loss_scale"] / 2 for a, b in zip(m, m[1:]) if a["skipped"])
    ok = bool(skipped) and halves and not m[-1]["skipped"] and m[-1]["loss"] < m[0]["loss"]
    rows.append({"check": "fp16 overflow skips, then trains", "ok": ok,
                 "detail": f"skipped steps {skipped}, scale {m[0]['loss_scale']:g} -> {m[-1]['loss_scale']:g}, "
                           f"halved after every skip: {halves}; loss {m[0]['loss']:.4f} -> {m[-1]['loss']:.4f}"})
    resumed = os.path.join(work, "fp16-resumed.jsonl")
    code, text = train(mt, config, resumed, sets + ["checkpoint.every=0"], env, extra=["--resume", ck + "/step-000025"])
    r = [json.loads(line) for line in open(resumed)] if code == 0 else []
    same = [(a["loss"], a["loss_scale"]) for a in m[25:]] == [(b["loss"], b["loss_scale"]) for b in r]
    rows.append({"check": "fp16 resume from step 25 vs uninterrupted (loss and scale, bit for bit)", "ok": code == 0 and same,
                 "detail": (f"{len(r)} steps compared, identical: {same}" if code == 0 else text[-400:])})


def layer_flops(cfg):
    m, t = cfg["model"], cfg["train"]
    b, s, l, h = t["micro_batch_size"], t["seq_len"], m["layers"], m["hidden"]
    return 72.0 * b * s * l * h * h * (1 + s / (6.0 * h))


def load_config(path):
    return json.loads(re.sub(r"^\s*//.*$", "", open(path).read(), flags=re.M))


def bench(bindir, work, env, rows, peak):
    mt = os.path.join(bindir, "mics-train")
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        path = os.path.join(ROOT, "configs", "bench", f"{name}.json")
        cfg = load_config(path)
        for attention in ("materialized", "fused"):
            for ckpt in (False, True):
                variant = ("ckpt" if ckpt else "no ckpt") + (", fused attention" if attention == "fused" else "")
                m = os.path.join(work, f"{name}-{ckpt}-{attention}.jsonl")
                code, text = train(mt, path, m, ["train.steps=10", f"train.activation_checkpointing={'true' if ckpt else 'false'}",
                                                 f"runtime.attention=\"{attention}\""], env)
                if code != 0:
                    rows.append({"bench": name, "engine": "mics-train", "variant": variant, "error": text[-400:]})
                    continue
                steps = [json.loads(line) for line in open(m)]
                t = statistics.median(s["step_time_s"] for s in steps[1:])  # the first step is warm-up
                rows.append({"bench": name, "engine": "mics-train", "variant": variant, "step_s": t,
                             "tflops": layer_flops(cfg) / t / 1e12, "mfu": layer_flops(cfg) / t / 1e12 / peak})
        # Three variants in 10 steps each keep the whole call inside the device tool's 10 minutes.
        code, text = sh([sys.executable, os.path.join(ROOT, "scripts", "bench", "torch_peer.py"), "--config", path,
                         "--steps", "10", "--warmup", "3", "--variants", "eager,compile,eager+ckpt"], env=env, timeout=300)
        for line in text.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                rows.append({"bench": name, "engine": f"PyTorch {r['torch']}", "variant": r["variant"],
                             "step_s": r["step_s"], "tflops": r["tflops"], "mfu": r["tflops"] / peak})
        if code != 0:
            rows.append({"bench": name, "engine": "PyTorch", "variant": "-", "error": text[-400:]})


def profile(bindir, work, env, tables):
    """Each slice with --profile (4 steps; the op table covers steps 2-4), both attentions."""
    mt = os.path.join(bindir, "mics-train")
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        for attention in ("materialized", "fused"):
            path = os.path.join(ROOT, "configs", "bench", f"{name}.json")
            m = os.path.join(work, f"{name}-{attention}-profile.jsonl")
            cmd = [mt, "--config", path, "--metrics", m, "--set", "train.steps=4", "--profile",
                   "--set", f"runtime.attention=\"{attention}\""]
            code, text = sh(cmd, env=env, timeout=400)
            table = text[text.find("op profile"):] if "op profile" in text else text[-1500:]
            tables.append((f"{name}, {attention} attention", code,
                           "\n".join(line.split("] ", 1)[-1] for line in table.splitlines() if "done:" not in line)))


class Rows(list):
    """A list that calls on_append() after each append (the report is rewritten)."""
    on_append = None

    def append(self, item):
        super().append(item)
        if self.on_append:
            self.on_append()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["checks", "bench"])
    ap.add_argument("--bin", default=os.path.join(ROOT, "gpu-carry", "bin"))
    ap.add_argument("--report", default="gpu-results", help="report file name, without .md/.json")
    args = ap.parse_args()
    out = os.environ.get("OUT") or os.path.join(ROOT, "docs")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "8"))
    lib = os.path.join(ROOT, "gpu-carry", "lib")
    env["LD_LIBRARY_PATH"] = lib + ":" + env.get("LD_LIBRARY_PATH", "")
    gpu = card()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), 989.0)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    check_rows, bench_rows, profile_tables = Rows(), Rows(), Rows()

    def write_report(final):
        lines = [f"# GPU check ({today})", "",
                 f"Card: {gpu} (name, driver, memory). `scripts/gpu-check.sh {' '.join(args.parts)}`"
                 + ("." if final else " (unfinished: the call ended before every part ran)."), ""]
        if check_rows:
            lines += ["| check | result | detail |", "|---|---|---|"]
            lines += [f"| {r['check']} | {'pass' if r['ok'] else 'FAIL'} | {r['detail']} |" for r in check_rows]
            lines.append("")
        if bench_rows:
            lines += [f"Model TFLOP/s per GPU of the layers, 72*B*S*L*H^2*(1+S/(6H)) over the median step (steps 2-10), "
                      f"MFU against {peak:.0f} TFLOP/s dense bf16; recompute not credited.", "",
                      "| slice | engine | variant | step ms | TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
            for r in bench_rows:
                if "error" in r:
                    lines.append(f"| {r['bench']} | {r['engine']} | {r['variant']} | error: {r['error'][-200:]!r} | | |")
                else:
                    lines.append(f"| {r['bench']} | {r['engine']} | {r['variant']} | {1e3 * r['step_s']:.1f} | "
                                 f"{r['tflops']:.1f} | {100 * r['mfu']:.1f}% |")
        for name, code, table in profile_tables:
            lines += ["", f"`{name}` with `--profile`" + ("" if code == 0 else f" (exit {code})") + ":", "", "```",
                      table, "```"]
        report = "\n".join(lines) + "\n"
        open(os.path.join(out, args.report + ".md"), "w").write(report)
        json.dump({"date": today, "card": gpu, "finished": final, "checks": check_rows, "bench": bench_rows,
                   "profile": [{"slice": n, "exit": c, "table": t} for n, c, t in profile_tables]},
                  open(os.path.join(out, args.report + ".json"), "w"), indent=1)
        return report

    # Device time is scarce: the report is rewritten after every result, so a call cut
    # short by its time limit still brings back what it measured.
    for rows in (check_rows, bench_rows, profile_tables):
        rows.on_append = lambda: write_report(False)
    with tempfile.TemporaryDirectory() as work:
        if "checks" in args.parts:
            checks(args.bin, work, env, check_rows)
        if "bench" in args.parts:
            bench(args.bin, work, env, bench_rows, peak)
        if "profile" in args.parts:
            profile(args.bin, work, env, profile_tables)
    print(write_report(True))
    sys.exit(0 if all(r["ok"] for r in check_rows) else 1)


if __name__ == "__main__":
    main()
