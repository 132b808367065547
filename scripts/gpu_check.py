#!/usr/bin/env python3
"""The whole GPU check in one go (scripts/gpu-check.sh runs this on the GPU machine):

  checks  the CUDA tests; tiny BERT and GPT trained 50 steps on CUDA against the CPU
          backend (fp32 within 1e-4 relative, bf16 and fp16 within 2e-2; half precision also
          with one micro-step, the gradients used in place, and in bf16 the optimizer
          overlapped on a second stream, unbounded and on 2 SMs in chunks, and the weight
          gradients on a stream of their own, bit for bit; on 2 SMs unchunked, the GEMMs
          beside it planned for the other SMs, within 2e-2; activation checkpointing, BERT's
          FFN output kept, bit for bit); 4 ranks on the one
          GPU (staged communicator) against 1 rank in fp32 within 1e-4, and at p = 2 with the
          update overlapped against the same without, bit for bit; "auto" choosing staged there
          and "nccl" refused; one rank over NCCL;
          fp16 from a loss scale of 2^32 (overflows skipped, scale halved, then training) and
          its resume from a checkpoint, bit for bit; BERT 10B at p = 1 refused; the benchmark
          slices' runtime.attention "auto" resolving to cuDNN's on this GPU.
  bench   configs/bench/*-slice.json, 20 steps after 2 of warm-up: cuDNN's attention alone,
          that with cuDNN's nondeterministic backward and with the weight gradients on their
          own stream and with the optimizer overlapped on a partition (32 SMs unchunked, the
          GEMMs beside it planned for the rest), and those three together; with GEMM
          autotune and the optimizer overlapped on every SM; and with activation
          checkpointing (BERT's FFN output kept, train.keep_ffn_output), overlapped on every
          SM and with the three together; the PyTorch peer training the same model in the same call
          (scripts/bench/torch_peer.py: torch.compile with and without checkpointing). TFLOP/s
          per GPU (model FLOPs as mics-train counts them, engine/flops.cpp, and of the layers
          alone), MFU, and how long each overlapped forward waited for the update.
  bench-more  the other variants (GEMM autotune alone; the update overlapped without
          autotune, on every SM and on 32 SMs in chunks; partitioned at 20 and 48 SMs; the
          materialised and our fused attention; checkpointing without the overlap) and the eager peers
          (eager, eager+ckpt).
          Each part's wall time goes into the report, to plan the next call.
  profile each slice with --profile (cuDNN's attention): time per op, and the linear ops by
          shape.
  ops     mics-bench-ops at each slice's shapes: every op alone (GEMMs forward, backward with
          and without the bias gradient, dW and dX alone and on two streams, the FFN with its GELU; LayerNorm, GELU, AdamW, the
          gradient norm, the embedding backward, the cross-entropy in bytes/s of the least
          traffic each needs, beside the streaming add's; the update on 16, 32 and 48 SMs of
          the side queue, alone and beside the layer's forward GEMMs planned for the other
          SMs, against both on every SM one after the other, and at 32 SMs with the GEMMs
          planned for every SM); its JSON as OUT/<report>-ops-*.json.

The parts run in the order given (default: bench checks, which fit one 10-minute device call;
then bench-more profile ops in a second). Writes OUT/gpu-results.md (OUT:
$OUT, else docs/) and OUT/gpu-results.json, rewritten after every result.
"""
import argparse
import traceback
import collections
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_BF16 = {"H100": 989.0, "H200": 989.0}  # dense bf16 TFLOP/s, datasheet (docs/references.md)
# The benchmark's steps (the issue asks for 20 or more after warm-up): the first is slower
# (cuDNN plans, the GEMM autotune), and with the optimizer overlapped the second is the
# first whose forward runs beside the update.
BENCH_WARMUP, BENCH_STEPS = 2, 20


# The process groups running now: a signal that ends this script ends them too.
LIVE = set()


def run_killable(cmd, env):
    """cmd in a process group of its own, so that a timeout ends every process it started
    (mpirun's ranks too, which would otherwise stay behind holding the GPU). A group, not a
    session: the device tool ends what a call leaves running, except new sessions."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         process_group=0)
    LIVE.add(p)
    return p


def kill_group(p):
    try:
        os.killpg(p.pid, 9)
    except ProcessLookupError:
        pass
    LIVE.discard(p)


def end_on_signal(signum, _frame):
    """SIGTERM, SIGINT or SIGHUP (a call's time limit, Ctrl-C): the runs in flight go too."""
    for p in list(LIVE):
        kill_group(p)
    sys.exit(128 + signum)


def sh(cmd, env=None, timeout=None):
    """Runs cmd; returns (exit code, output), the code 124 and the output so far when it ran
    past `timeout` seconds (its whole process group killed): a hang costs one row, not the part."""
    p = run_killable(cmd, env)
    try:
        out, _ = p.communicate(timeout=timeout)
        LIVE.discard(p)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, _ = p.communicate()
        return 124, (out or "") + f"\n(gpu-check: killed after {timeout} s)"


# Loaded by cuDNN at run time (dlopen), so ldd never lists it: its SDPA engines compile their
# kernels with NVRTC, and without it every attention graph is declined.
DLOPENED = ("libnvrtc.so.13",)


def find_missing_libraries(binary, env):
    """Libraries `binary` needs that the loader does not find (cuDNN may live only in a Python
    wheel on the GPU machine, nvidia/*/lib), and the DLOPENED ones: searched for under the
    Python prefixes, /usr/local and /opt, and their folders put on LD_LIBRARY_PATH. Returns
    what of the linked ones stays missing (a missing DLOPENED one is only said)."""
    def missing():
        out = subprocess.run(["ldd", binary], env=env, capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if "not found" in line]

    def loadable(name):
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        folders = [f for f in env.get("LD_LIBRARY_PATH", "").split(":") if f]
        return name in cache or any(os.path.exists(os.path.join(f, name)) for f in folders)

    # The Python packages' NVIDIA wheels first (nvidia/*/lib): walking all of /usr/local and
    # /opt can take most of a minute.
    import site
    roots = [os.path.join(p, "nvidia") for p in site.getsitepackages()]
    for r in ("/usr/local", "/opt", sys.prefix, sys.base_prefix):
        if not any(r == q or r.startswith(q.rstrip("/") + "/") for q in roots):
            roots.append(r)
    for name in missing() + [n for n in DLOPENED if not loadable(n)]:
        found = None
        for root in roots:
            for folder, _, files in os.walk(root):
                if name in files:
                    found = folder
                    break
            if found:
                break
        if found:
            print(f"gpu-check: {name} from {found}", flush=True)
            env["LD_LIBRARY_PATH"] = found + ":" + env.get("LD_LIBRARY_PATH", "")
        elif name in DLOPENED:
            print(f"gpu-check: {name} found nowhere: cuDNN attention will be declined", flush=True)
    return missing()


def card():
    code, text = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return text.strip().splitlines()[0] if code == 0 else "unknown"


def losses(path):
    """The loss of every step; a non-finite one (written as null) as infinity."""
    return [float("inf") if r["loss"] is None else r["loss"] for r in map(json.loads, open(path))]


def train(binary, config, metrics, sets, env, ranks=1, timeout=None, extra=(), log_level="warn"):
    """A run of mics-train: (exit code, output). Tiny runs end in seconds; the deadline only
    stops a hang from eating the call (120 s, 180 s under mpirun, whose ranks also give up on
    a collective after 60 s instead of the default 600)."""
    cmd = [binary, "--config", config, "--metrics", metrics, "--log-level", log_level, "--set", "log.every=1", *extra]
    for s in sets:
        cmd += ["--set", s]
    if ranks > 1:
        cmd += ["--set", "runtime.comm_timeout_s=60"]
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + cmd
    if os.path.exists(metrics):
        os.remove(metrics)
    code, text = sh(cmd, env=env, timeout=timeout or (180 if ranks > 1 else 120))
    return code, text


def max_rel(a, b):
    """The largest relative difference; infinity where the lengths differ or a loss is not
    finite (max() would pass over a NaN)."""
    if len(a) != len(b) or not a or not all(math.isfinite(x) for x in a + b):
        return float("inf")
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def checks(bindir, work, env, rows):
    # cuDNN's attention tests, and those of our own fused attention (its mma.sync kernels
    # never yet run on a GPU), run in processes of their own: a fault in a kernel poisons the
    # CUDA context, and would fail every test after it. cuDNN says why it
    # declines a graph on stderr (CUDNN_LOGERR_DBG).
    cudnn_env = dict(env, CUDNN_LOGERR_DBG="1", CUDNN_LOGDEST_DBG="stderr")
    for test, name, gtest_filter, test_env in (
            ("test_cuda_ops", "test_cuda_ops", "-*udnn*:*CudaFusedAttention*", env),
            ("test_cuda_ops", "test_cuda_ops, our fused attention", "*CudaFusedAttention*", env),
            ("test_cuda_model", "test_cuda_model", "-*udnn*", env),
            ("test_cuda_ops", "test_cuda_ops, cuDNN attention", "*udnn*", cudnn_env),
            ("test_cuda_model", "test_cuda_model, cuDNN attention", "*udnn*", cudnn_env)):
        code, text = sh([os.path.join(bindir, test), "--gtest_brief=1", f"--gtest_filter={gtest_filter}"],
                        env=test_env, timeout=300)
        passed = re.search(r"\[  PASSED  \] (\d+) test", text)
        failed = re.findall(r"\[  FAILED  \] (\S+)", text)
        rows.append({"check": name, "ok": code == 0,
                     "detail": f"{passed.group(1) if passed else 0} passed, {len(set(failed))} failed"
                               + (": " + ", ".join(sorted(set(failed))[:8]) if failed else "")})
        print(text[-3000:] if code else f"{name}: ok", flush=True)
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
        # One micro-step per step: a single rank's half-precision gradients are used in place
        # (AdamW reads them; no fp32 accumulator), the benchmark's path; the runs above sum
        # two micro-steps in fp32.
        one_step = tiny + ["train.global_batch_size=8"]
        ref8 = os.path.join(work, f"{model}-cpu-gb8.jsonl")
        code8, text8 = train(mt, config, ref8, one_step + ["runtime.backend=\"cpu\""], env)
        for precision in ("bf16", "fp16"):
            m = os.path.join(work, f"{model}-cuda-{precision}-inplace.jsonl")
            code, text = train(mt, config, m, one_step + ["runtime.backend=\"cuda\"", f"train.precision=\"{precision}\""],
                               env, log_level="info")
            if precision == "bf16":
                # The optimizer's update on the second stream (runtime.overlap_optimizer),
                # with its ordinary grids and bounded to 2 SMs, in chunks and whole: the
                # same arithmetic per element on the same values, so the same losses, bit
                # for bit. Whole (unchunked), the update partitions the SMs and the GEMMs
                # beside it are planned for the rest (cuBLASLt's SM count target): other
                # algorithms may sum in another order, so bf16's limit there, and the log
                # must say so.
                for sms, chunked in ((0, True), (2, True), (2, False)):
                    mo = os.path.join(work, f"{model}-cuda-bf16-inplace-overlap-{sms}-{chunked}.jsonl")
                    co, to = train(mt, config, mo, one_step + ["runtime.backend=\"cuda\"", "train.precision=\"bf16\"",
                                                              "runtime.overlap_optimizer=true",
                                                              f"runtime.overlap_optimizer_sms={sms}",
                                                              f"runtime.overlap_optimizer_chunked={str(chunked).lower()}"],
                                   env, log_level="info")
                    do = max_rel(losses(mo), losses(m)) if co == 0 and code == 0 else float("inf")
                    where = ("a second stream" if sms == 0 else f"a second stream, at most {sms} SMs"
                             + ("" if chunked else ", unchunked, GEMMs planned for the rest"))
                    limit = 0.0 if chunked else 2e-2
                    said = chunked or "GEMMs are planned for the other" in to
                    rows.append({"check": f"{model}-tiny 50 steps bf16, optimizer overlapped on {where} vs at once",
                                 "ok": do <= limit and said,
                                 "detail": (f"max relative loss difference {do:.2e} (limit {limit:g})"
                                            + ("" if said else "; the log does not say 'GEMMs are planned for the other'"))
                                           if co == 0 and code == 0 else (to if co else text)[-300:]})
                # The weight gradients on a stream of their own (runtime.overlap_weight_grads):
                # the same products, so the same losses, bit for bit.
                mw = os.path.join(work, f"{model}-cuda-bf16-inplace-weight-grads.jsonl")
                cw, tw = train(mt, config, mw, one_step + ["runtime.backend=\"cuda\"", "train.precision=\"bf16\"",
                                                          "runtime.overlap_weight_grads=true"], env, log_level="info")
                dw = max_rel(losses(mw), losses(m)) if cw == 0 and code == 0 else float("inf")
                said = "weight gradients on a second stream" in tw
                rows.append({"check": f"{model}-tiny 50 steps bf16, weight gradients on their own stream vs not",
                             "ok": dw == 0.0 and said,
                             "detail": (f"max relative loss difference {dw:.2e} (limit 0)"
                                        + ("" if said else "; the log does not say 'weight gradients on a second stream'"))
                                       if cw == 0 and code == 0 else (tw if cw else text)[-300:]})
                # Activation checkpointing recomputes each block (up to its FFN's GELU: GPT
                # always, BERT with train.keep_ffn_output) with the same kernels on the same
                # inputs: the same losses, bit for bit.
                mc = os.path.join(work, f"{model}-cuda-bf16-inplace-ckpt.jsonl")
                ckpt_sets = ["train.activation_checkpointing=true"] + (["train.keep_ffn_output=true"] if model == "bert" else [])
                cc, tc = train(mt, config, mc, one_step + ["runtime.backend=\"cuda\"", "train.precision=\"bf16\""] + ckpt_sets,
                               env)
                dc = max_rel(losses(mc), losses(m)) if cc == 0 and code == 0 else float("inf")
                rows.append({"check": f"{model}-tiny 50 steps bf16, activation checkpointing"
                                      + (" (FFN output kept)" if model == "bert" else "") + " vs not",
                             "ok": dc == 0.0,
                             "detail": f"max relative loss difference {dc:.2e} (limit 0)" if cc == 0 and code == 0
                                       else (tc if cc else text)[-300:]})
            ok = code == 0 and code8 == 0 and "gradients used in place" in text
            d = max_rel(losses(m), losses(ref8)) if code == 0 and code8 == 0 else float("inf")
            rows.append({"check": f"{model}-tiny 50 steps of one micro-step, CUDA {precision} gradients in place vs CPU fp32",
                         "ok": ok and d <= 2e-2,
                         "detail": (f"max relative loss difference {d:.2e} (limit 2e-2)"
                                    + ("" if "gradients used in place" in text else "; the log does not say 'gradients used in place'"))
                                   if code == 0 and code8 == 0 else (text if code else text8)[-300:]})
        # Fused attention, the engine's kernels ("fused": bf16/fp16, head dim 64 or 128, so 2
        # heads of 64 here) and cuDNN's ("cudnn"), against the materialised path, all on CUDA
        # in bf16.
        heads = tiny + ["runtime.backend=\"cuda\"", "train.precision=\"bf16\"", "model.heads=2"]
        runs = {}
        for attention in ("materialized", "fused", "cudnn"):
            m = os.path.join(work, f"{model}-{attention}.jsonl")
            runs[attention] = train(mt, config, m, heads + [f"runtime.attention=\"{attention}\""], env) + (m,)
        for attention in ("fused", "cudnn"):
            pair = (runs[attention], runs["materialized"])
            ok = all(r[0] == 0 for r in pair)
            d = max_rel(losses(pair[0][2]), losses(pair[1][2])) if ok else float("inf")
            rows.append({"check": f"{model}-tiny (2 heads of 64) 50 steps bf16, {attention} vs materialised attention",
                         "ok": d <= 2e-2,
                         "detail": f"max relative loss difference {d:.2e} (limit 2e-2)" if ok
                                   else next(r[1] for r in pair if r[0] != 0)[-400:]})
    # Several ranks on the one GPU: staged communicator against one rank, fp32.
    config = os.path.join(ROOT, "configs", "gpt-tiny.json")
    base = tiny + ["runtime.backend=\"cuda\"", "train.precision=\"fp32\"", "train.micro_batch_size=4",
                   "train.global_batch_size=16"]
    one = os.path.join(work, "one-rank.jsonl")
    code, text = train(mt, config, one, base, env)
    if code != 0:  # the reference of the rows below, which then say only "inf"
        rows.append({"check": "gpt-tiny 1 rank on CUDA, fp32 (the reference of the rows below)", "ok": False,
                     "detail": text[-400:]})
    four = {}
    for label, extra in (("p=4, k=2, hierarchical", ["mics.partition_size=4", "mics.hierarchical_allgather=true"]),
                         ("p=2, k=2", ["mics.partition_size=2"])):
        m = os.path.join(work, "four-" + label.replace(" ", "").replace(",", "_").replace("=", "") + ".jsonl")
        c4, t4 = train(mt, config, m, base + ["runtime.ranks_per_node=2", "runtime.communicator=\"staged\""] + extra,
                       env, ranks=4)
        four[label] = (c4, m)
        d = max_rel(losses(m), losses(one)) if c4 == 0 and code == 0 else float("inf")
        rows.append({"check": f"4 ranks on one GPU ({label}, staged) vs 1 rank, fp32", "ok": d <= 1e-4,
                     "detail": f"max relative loss difference {d:.2e} (limit 1e-4)" if c4 == 0 else t4[-400:]})
    # Left to choose (runtime.communicator "auto"), ranks that find by PCI bus id that they
    # share the GPU take the staged communicator, all of them: the same run as above; NCCL
    # asked for there is refused by name before anything runs.
    c4, m4 = four["p=2, k=2"]
    m = os.path.join(work, "four-p2-auto.jsonl")
    ca, ta = train(mt, config, m, base + ["runtime.ranks_per_node=2", "runtime.communicator=\"auto\"",
                                         "mics.partition_size=2"], env, ranks=4, log_level="info")
    picked = "communicator staged" in ta and "communicator nccl" not in ta
    d = max_rel(losses(m), losses(m4)) if ca == 0 and c4 == 0 else float("inf")
    rows.append({"check": "4 ranks on one GPU, communicator auto: staged on every rank, the same losses", "ok": picked and d == 0.0,
                 "detail": (f"max relative loss difference {d:.2e} (limit 0); log says staged: {picked}") if ca == 0
                           else ta[-400:]})
    cn, tn = train(mt, config, os.path.join(work, "four-nccl.jsonl"),
                   base + ["runtime.ranks_per_node=2", "runtime.communicator=\"nccl\"", "mics.partition_size=2"], env,
                   ranks=4)
    ok = cn == 2 and "needs a GPU per rank" in tn and "share GPU" in tn
    line = next((l for l in tn.splitlines() if "needs a GPU per rank" in l), tn[-300:])
    rows.append({"check": "4 ranks on one GPU asking for NCCL are refused by name", "ok": ok,
                 "detail": f"exit {cn}: {line[:300]}"})
    # The same p = 2 run with the optimizer's update on each rank's second stream: the side
    # queue's fences with partition groups (the layers prefetched behind the first are
    # updated in line), on the CUDA backend itself; the same arithmetic, so the same bits.
    m = os.path.join(work, "four-p2-overlap.jsonl")
    co, to = train(mt, config, m, base + ["runtime.ranks_per_node=2", "runtime.communicator=\"staged\"",
                                         "mics.partition_size=2", "runtime.overlap_optimizer=true"], env, ranks=4)
    d = max_rel(losses(m), losses(m4)) if co == 0 and c4 == 0 else float("inf")
    rows.append({"check": "4 ranks on one GPU (p=2, k=2, staged), fp32, optimizer overlapped vs at once", "ok": d == 0.0,
                 "detail": f"max relative loss difference {d:.2e} (limit 0)" if co == 0 else to[-400:]})
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
    # runtime.attention "auto" on this GPU: cuDNN's for the benchmark slices (what their
    # configs run when no variant names the attention), named with the GPU it asked.
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        code, text = sh([mt, "--config", os.path.join(ROOT, "configs", "bench", f"{name}.json"), "--dry-run"],
                        env=env, timeout=60)
        line = next((l.strip() for l in text.splitlines() if l.strip().startswith("attention ")), text[-200:])
        ok = code == 0 and "cudnn (auto:" in line and "GPU compute capability" in line
        rows.append({"check": f"{name}: runtime.attention auto resolves to cuDNN's here", "ok": ok,
                     "detail": line[:300]})


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
    first, last = (float("nan") if r["loss"] is None else r["loss"] for r in (m[0], m[-1]))
    ok = bool(skipped) and halves and not m[-1]["skipped"] and math.isfinite(last) and last < first
    rows.append({"check": "fp16 overflow skips, then trains", "ok": ok,
                 "detail": f"skipped steps {skipped}, scale {m[0]['loss_scale']:g} -> {m[-1]['loss_scale']:g}, "
                           f"halved after every skip: {halves}; loss {first:.4f} -> {last:.4f}"})
    resumed = os.path.join(work, "fp16-resumed.jsonl")
    # (its own checkpoint.dir: going back to an older checkpoint of a directory is refused)
    code, text = train(mt, config, resumed, sets + ["checkpoint.every=0", f"checkpoint.dir=\"{ck}-resumed\""], env,
                       extra=["--resume", ck + "/step-000025"])
    r = [json.loads(line) for line in open(resumed)] if code == 0 else []
    same = [(a["loss"], a["loss_scale"]) for a in m[25:]] == [(b["loss"], b["loss_scale"]) for b in r]
    rows.append({"check": "fp16 resume from step 25 vs uninterrupted (loss and scale, bit for bit)", "ok": code == 0 and same,
                 "detail": (f"{len(r)} steps compared, identical: {same}" if code == 0 else text[-400:])})


def _shape(cfg):
    m, t = cfg["model"], cfg["train"]
    h = m["hidden"]
    return (float(t["micro_batch_size"]), float(t["seq_len"]), float(h), float(m.get("ffn") or 4 * h),
            float(m["layers"]), float(m["vocab_size"]))


def layer_flops(cfg):
    """Model FLOPs of the layers for one micro-batch (B samples), engine/flops.cpp's per-layer
    count: L*(24*S*H^2 + 12*S*H*F + 12*S^2*H) per sample, = 72*S*L*H^2*(1 + S/(6H)) for F = 4H."""
    b, s, h, f, l, _ = _shape(cfg)
    return b * (l * (24.0 * s * h * h + 12.0 * s * h * f + 12.0 * s * s * h))


def bert_masked_rows(cfg):
    """Expected masked rows per BERT micro-batch from the engine's data (data/batcher.cpp):
    each position selected with probability p = data.mask_prob, and one fallback position
    in a sample with none selected: B*(S*p + (1-p)^S)."""
    b, s = cfg["train"]["micro_batch_size"], cfg["train"]["seq_len"]
    p = cfg.get("data", {}).get("mask_prob", 0.15)
    return b * (s * p + (1.0 - p) ** s)


def model_flops(cfg):
    """Model FLOPs for one micro-batch exactly as mics-train credits them (engine/flops.cpp
    model_flops_per_sample x B, the number behind its logged TFLOP/s): the layers plus the
    vocabulary projection 6*B*S*H*V, docs/references.md's formula, for BERT too (whose head runs
    on the masked rows only: both engines are credited alike)."""
    b, s, h, f, l, v = _shape(cfg)
    return layer_flops(cfg) + 6.0 * b * s * h * v


def load_config(path):
    return json.loads(re.sub(r"^\s*//.*$", "", open(path).read(), flags=re.M))


def stream(cmd, env, timeout, on_line):
    """Runs cmd, handing each output line to on_line as it comes (so a device call cut short
    keeps what finished); its process group killed after timeout seconds. Returns (exit
    code, the last lines that are not JSON results: what went wrong, when something did)."""
    p = run_killable(cmd, env)
    timer = threading.Timer(timeout, kill_group, (p,))
    timer.start()
    tail = collections.deque(maxlen=40)
    try:
        for line in p.stdout:
            if not line.startswith("{"):
                tail.append(line)
            on_line(line)
        code = p.wait()
    finally:
        timer.cancel()
        LIVE.discard(p)
    return code, "".join(tail)


def bench(bindir, work, env, rows, peak, rest=False):
    """Both slices, in two parts so that one device call (10 minutes) can hold the rows that
    matter with the checks: `bench`, the engine's likely fastest variants with and without
    activation checkpointing against torch.compile's full model with and without it;
    `bench-more`, the other variants (GEMM autotune alone, the update overlapped without autotune on every SM and
    bounded to 32 SMs in chunks, the partition at 20 and 48 SMs, the materialised and our
    fused attention, checkpointing without the overlap) and the eager peers."""
    mt = os.path.join(bindir, "mics-train")
    # (attention, activation checkpointing, GEMM autotune, optimizer overlapped with the
    # forward: 0 no, "all" on every SM its blocks find free, N on at most N SMs)
    # The materialised attention too, should cuDNN's attention fail on the machine. GEMM
    # autotune with and without the overlap: on the H200 (2026-11-27) it gained on BERT's
    # slice and lost on GPT-2's, across two calls; here side by side. (At most 16 SMs for the
    # update lost 12-15 ms a step there, so it moved to bench-more.)
    # With checkpointing last (a call cut short loses it first), against torch.compile with
    # checkpointing, the reference for that case (docs/references.md: 323 TFLOP/s on
    # BERT's slice, where eager+ckpt reached 280). The peer's layers-only variant, compared
    # with in earlier runs, is left out: the full models compare like with like.
    # Two switches, each against cuDNN's attention alone (no autotune, whose choice moves the
    # GEMMs by a few percent from run to run, no overlap): "cudnn-nd", cuDNN's nondeterministic
    # attention backward (runtime.cudnn_deterministic false; BERT's deterministic one ran at
    # 160 TFLOP/s on the H200, 2026-11-27, half its forward's rate); "cudnn-wg", the weight
    # gradients on a stream of their own (runtime.overlap_weight_grads: do dW and dX fill
    # each other's last partial wave?).
    # "32 whole": the update unchunked on 32 SMs, each layer's holding them to its end, and
    # the forward's GEMMs beside it planned for the other SMs (cuBLASLt's SM count target): a
    # partition, so that the update, bound by memory bandwidth, runs beside GEMMs that no
    # longer wait for the SMs it holds. On the H200 (2026-11-27) the update on every SM
    # hid nothing (the forward waited 6.4 of its 9.7 ms), and bounded without the GEMMs'
    # target it lost 3-12 ms a step. Like the two switches above, weighed against cuDNN's
    # attention alone, without autotune. (The materialised attention, slower on that card,
    # moved to bench-more.) Checkpointing "keep": BERT's blocks keep their second LayerNorm's
    # input (train.keep_ffn_output), so the recompute skips the FFN's second product, as GPT's
    # always does (bench-more's checkpointing run recomputes BERT's blocks whole).
    # "cudnn-nd-wg" with "32 whole": the three together, with and without checkpointing, so
    # that whether their gains add up is measured in the same call as the peer (the bench
    # configs would then ship the combination).
    first = [("cudnn", False, False, 0), ("cudnn-nd", False, False, 0), ("cudnn-wg", False, False, 0),
             ("cudnn", False, False, "32 whole"), ("cudnn-nd-wg", False, False, "32 whole"),
             ("cudnn", False, True, "all"), ("cudnn", "keep", False, "all"), ("cudnn-nd-wg", "keep", False, "32 whole")]
    # ("N whole" as above at other widths; "32": chunked, the forward's blocks may take the
    # SMs back every ~0.1 ms, and its GEMMs planned for every SM.)
    more = [("cudnn", False, True, 0), ("cudnn", False, False, "all"), ("cudnn", False, False, 32),
            ("cudnn", False, False, "20 whole"), ("cudnn", False, False, "48 whole"), ("materialized", False, False, 0),
            ("fused", False, False, 0), ("cudnn", True, False, 0)]
    variants, peers = (more, "eager,eager+ckpt") if rest else (first, "compile,compile+ckpt")
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        bench_slice(mt, name, variants, peers, work, env, rows, peak)


def bench_slice(mt, name, variants, peers, work, env, rows, peak):
    path = os.path.join(ROOT, "configs", "bench", f"{name}.json")
    cfg = load_config(path)
    full, layers = model_flops(cfg), layer_flops(cfg)
    for attention, ckpt, tune, overlap in variants:
        sms, _, whole = str(overlap).partition(" ")  # "all", N or "N whole" (unchunked)
        bound = "" if overlap == "all" else f" on {sms} SMs" + (", unchunked, GEMMs on the rest" if whole else "")
        keep = ckpt == "keep" and cfg["model"]["type"] == "bert"  # train.keep_ffn_output (post-LN only)
        # attention: "materialized", "fused" or "cudnn", then "-nd" (cuDNN's nondeterministic
        # backward) and/or "-wg" (weight gradients on their own stream)
        kind, *switches = attention.split("-")
        nondeterministic, weight_grads = "nd" in switches, "wg" in switches
        variant = ("ckpt" + (" (FFN output kept)" if keep else "") if ckpt else "no ckpt") + \
            {"materialized": "", "fused": ", fused attention", "cudnn": ", cuDNN attention"}[kind] + \
            (" (nondeterministic backward)" if nondeterministic else "") + \
            (", weight gradients on their own stream" if weight_grads else "") + \
            (", GEMM autotune" if tune else "") + ("" if not overlap else ", optimizer overlapped" + bound)
        m = os.path.join(work, f"{name}-{ckpt}-{attention}-{tune}-{overlap}.jsonl")
        code, text = train(mt, path, m, [f"train.steps={BENCH_WARMUP + BENCH_STEPS}",
                                         f"train.activation_checkpointing={'true' if ckpt else 'false'}",
                                         *(["train.keep_ffn_output=true"] if keep else []),
                                         f"runtime.attention=\"{kind}\"",
                                         f"runtime.cudnn_deterministic={'false' if nondeterministic else 'true'}",
                                         f"runtime.overlap_weight_grads={'true' if weight_grads else 'false'}",
                                         f"runtime.gemm_autotune={'true' if tune else 'false'}",
                                         f"runtime.overlap_optimizer={'true' if overlap else 'false'}",
                                         f"runtime.overlap_optimizer_sms={0 if overlap == 'all' else sms}",
                                         f"runtime.overlap_optimizer_chunked={'false' if whole else 'true'}"], env,
                           timeout=240, log_level="info")
        if code != 0:
            rows.append({"bench": name, "engine": "mics-train", "variant": variant, "error": text[-400:]})
            continue
        steps = [json.loads(line) for line in open(m)][BENCH_WARMUP:]
        t = statistics.median(s["step_time_s"] for s in steps)
        if overlap:  # how long each forward stood waiting for the overlapped update (median step)
            variant += f" (forward waited {1e3 * statistics.median(s.get('optimizer_wait_s', 0.0) for s in steps):.2f} ms)"
        rows.append({"bench": name, "engine": "mics-train", "variant": variant, "ckpt": bool(ckpt), "step_s": t,
                     "tflops": full / t / 1e12, "layer_tflops": layers / t / 1e12,
                     "mfu": full / t / 1e12 / peak,
                     # what the engine itself logged (engine/flops.cpp): should equal tflops
                     "engine_logged_tflops": statistics.median(s["tflops_per_device"] for s in steps),
                     # which kernels and gradient path it chose, in its own words
                     "logged": sorted({re.sub(r"^\[[^]]*\] \[\w+\] ", "", l) for l in text.splitlines()
                                       if re.search(r"cuDNN .*attention for|nondeterministic attention backward|cuBLASLt declined|cuBLASLt refused|GEMMs (are )?planned for"
                                                    r"|gradients used in place|gradients accumulated|cuBLASLt autotune",
                                                    l)})})

    # The peer variants in one process, as many steps each.
    def peer_line(line):
        try:
            r = json.loads(line) if line.startswith("{") else None
        except ValueError:
            r = None
        if not isinstance(r, dict) or "step_s" not in r:
            return
        rows.append({"bench": name, "engine": f"PyTorch {r['torch']}",
                     "variant": r["variant"].replace("+layers", "") + (", layers only" if r["model"] == "layers-only" else ""),
                     "peer_model": r["model"], "ckpt": r["checkpointing"], "step_s": r["step_s"],
                     "tflops": r["tflops"], "layer_tflops": r["layer_tflops"],
                     "mfu": r["tflops"] / peak,
                     "losses": r.get("losses")})
    code, text = stream([sys.executable, os.path.join(ROOT, "scripts", "bench", "torch_peer.py"), "--config", path,
                         "--steps", str(BENCH_STEPS), "--warmup", "3", "--variants", peers],
                        env, 420, peer_line)
    if code != 0:
        rows.append({"bench": name, "engine": "PyTorch", "variant": peers, "error": text[-400:]})


def peer_ratio(r, rows):
    """mics-train's model TFLOP/s over the best full-model PyTorch variant of the same slice
    with the same activation checkpointing (both credited with the same FLOPs)."""
    if r.get("engine") != "mics-train" or "error" in r:
        return ""
    peers = [p for p in rows if p["bench"] == r["bench"] and p.get("peer_model") == "full"
             and p.get("ckpt") == r.get("ckpt") and "error" not in p]
    if not peers:
        return ""
    best = max(peers, key=lambda p: p["tflops"])
    return f"{r['tflops'] / best['tflops']:.2f}x {best['variant']}"


def profile(bindir, work, env, tables):
    """Each slice with --profile (4 steps; the op table covers steps 2-4, each op timed by CUDA
    events), with cuDNN's attention (the materialised and our fused ones were profiled on
    2026-11-27: docs/gpu-runs/)."""
    mt = os.path.join(bindir, "mics-train")
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        for attention in ("cudnn",):
            path = os.path.join(ROOT, "configs", "bench", f"{name}.json")
            m = os.path.join(work, f"{name}-{attention}-profile.jsonl")
            cmd = [mt, "--config", path, "--metrics", m, "--set", "train.steps=4", "--profile",
                   "--set", f"runtime.attention=\"{attention}\""]
            code, text = sh(cmd, env=env, timeout=240)
            table = text[text.find("op profile"):] if "op profile" in text else text[-1500:]
            tables.append((f"{name}, {attention} attention", code,
                           "\n".join(line.split("] ", 1)[-1] for line in table.splitlines() if "done:" not in line)))


def ops(bindir, out, env, tables, checks_rows, report):
    """mics-bench-ops on the GPU at each slice's shapes: its table verbatim in the report, its
    JSON beside the report (OUT/<report>-ops-<slice>.json); a failed run is a failed check."""
    for name in ("bert-10b-slice", "gpt2-10b-slice"):
        path = os.path.join(ROOT, "configs", "bench", f"{name}.json")
        js = os.path.join(out, f"{report}-ops-{name}.json")
        code, text = sh([os.path.join(bindir, "mics-bench-ops"), "--backend", "cuda", "--config", path,
                         "--iters", "20", "--json", js], env=env, timeout=240)
        tables.append((f"mics-bench-ops --backend cuda --config configs/bench/{name}.json", code, text.strip()))
        if code != 0:
            checks_rows.append({"check": f"mics-bench-ops at {name}'s shapes", "ok": False,
                                "detail": f"exit {code}: {text.strip()[-300:]}"})


def cell(text):
    """text in one cell of a markdown table: a program's output has line breaks and bars."""
    return str(text).replace("\n", " ⏎ ").replace("|", "\\|")


class Rows(list):
    """A list that calls on_append() after each append (the report is rewritten)."""
    on_append = None

    def append(self, item):
        super().append(item)
        if self.on_append:
            self.on_append()


def main():
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, end_on_signal)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Checked below rather than with choices=: Python 3.11's argparse rejects an empty list
    # (and a list default) against choices for nargs="*".
    ap.add_argument("parts", nargs="*",
                    help="checks, bench, bench-more, profile and/or ops, run in this order (default: bench checks)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "gpu-carry", "bin"))
    ap.add_argument("--report", default="gpu-results", help="report file name, without .md/.json")
    args = ap.parse_args()
    args.parts = args.parts or ["bench", "checks"]
    unknown = [p for p in args.parts if p not in ("checks", "bench", "bench-more", "profile", "ops")]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}: give checks, bench, bench-more, profile and/or ops")
    out = os.environ.get("OUT") or os.path.join(ROOT, "docs")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "8"))
    lib = os.path.join(ROOT, "gpu-carry", "lib")
    env["LD_LIBRARY_PATH"] = lib + ":" + env.get("LD_LIBRARY_PATH", "")
    unresolved = find_missing_libraries(os.path.join(args.bin, "mics-train"), env)
    if unresolved:
        print(f"gpu-check: mics-train needs {', '.join(unresolved)}, found nowhere here", file=sys.stderr)
        sys.exit(2)
    gpu = card()
    code, text = sh([os.path.join(args.bin, "mics-train"), "--version"], env=env, timeout=60)
    build = text.strip() if code == 0 else f"mics-train --version failed (exit {code})"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), 989.0)
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    check_rows, bench_rows, profile_tables = Rows(), Rows(), Rows()
    part_seconds = {}  # each part's wall time, to plan the next call's parts within its limit

    def write_report(final):
        lines = [f"# GPU check ({today})", "",
                 f"Card: {gpu} (name, driver, memory). {build}. `scripts/gpu-check.sh {' '.join(args.parts)}`"
                 + ("." if final else " (unfinished: the call ended before every part ran).")
                 + (" Wall time: " + ", ".join(f"{p} {t:.0f} s" for p, t in part_seconds.items()) + "." if part_seconds
                    else ""), ""]
        if check_rows:
            lines += ["| check | result | detail |", "|---|---|---|"]
            lines += [f"| {r['check']} | {'pass' if r['ok'] else 'FAIL'} | {cell(r['detail'])} |" for r in check_rows]
            lines.append("")
        if bench_rows:
            lines += [f"TFLOP/s per GPU over the median of {BENCH_STEPS} steps after {BENCH_WARMUP} of warm-up "
                      "(PyTorch: after 3); recompute not credited. *model*: the "
                      "FLOPs mics-train logs (engine/flops.cpp): per sample L*(24*S*H^2 + 12*S*H*F + 12*S^2*H) "
                      "+ 6*S*H*V (docs/references.md's formula; BERT's head runs on the masked rows only), both engines credited alike, the PyTorch peer training the same model "
                      "(embeddings, layers, head, cross-entropy, grad clipping); *layers*: the first term "
                      "alone (72*B*S*L*H^2*(1+S/(6H)) at F = 4H). \"layers only\" is the peer's earlier "
                      "method (layer stack, square-mean loss; docs/references.md). MFU of the model column against "
                      f"{peak:.0f} TFLOP/s dense bf16. *vs peer*: model TFLOP/s over the best full-model "
                      "PyTorch variant with the same checkpointing.", "",
                      "| slice | engine | variant | step ms | TFLOP/s model | TFLOP/s layers | MFU | vs peer |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in sorted(bench_rows, key=lambda r: r["bench"]):  # by slice, each in run order
                if "error" in r:
                    lines.append(f"| {r['bench']} | {r['engine']} | {r['variant']} | error: {cell(r['error'][-200:])} | | | | |")
                else:
                    lines.append(f"| {r['bench']} | {r['engine']} | {r['variant']} | {1e3 * r['step_s']:.1f} | "
                                 f"{r['tflops']:.1f} | {r['layer_tflops']:.1f} | {100 * r['mfu']:.1f}% | "
                                 f"{peer_ratio(r, bench_rows)} |")
            logged = [(r, l) for r in bench_rows for l in r.get("logged", [])]
            if logged:
                lines += ["", "What mics-train logged about its choices:", ""]
                lines += [f"- {r['bench']}, {r['variant']}: {l}" for r, l in logged]
        for name, code, table in profile_tables:
            title = f"`{name}`" if name.startswith("mics-bench-ops") else f"`{name}` with `--profile`"
            lines += ["", title + ("" if code == 0 else f" (exit {code})") + ":", "", "```", table, "```"]
        report = "\n".join(lines) + "\n"
        open(os.path.join(out, args.report + ".md"), "w").write(report)
        json.dump({"date": today, "card": gpu, "build": build, "finished": final, "part_seconds": part_seconds,
                   "checks": check_rows, "bench": bench_rows,
                   "profile": [{"run": n, "exit": c, "table": t} for n, c, t in profile_tables]},
                  open(os.path.join(out, args.report + ".json"), "w"), indent=1)
        return report

    # Device time is scarce: the report is rewritten after every result, so a call cut
    # short by its time limit still brings back what it measured.
    for rows in (check_rows, bench_rows, profile_tables):
        rows.on_append = lambda: write_report(False)
    # The parts run in the order given (`bench checks` measures first when device time is short).
    runs = {"checks": lambda work: checks(args.bin, work, env, check_rows),
            "bench": lambda work: bench(args.bin, work, env, bench_rows, peak),
            "bench-more": lambda work: bench(args.bin, work, env, bench_rows, peak, rest=True),
            "profile": lambda work: profile(args.bin, work, env, profile_tables),
            "ops": lambda work: ops(args.bin, out, env, profile_tables, check_rows, args.report)}
    with tempfile.TemporaryDirectory() as work:
        for part in dict.fromkeys(args.parts):
            started = time.monotonic()
            try:
                runs[part](work)
            except Exception as e:  # a result that cannot be read is a failure, not the end of the call
                traceback.print_exc()
                check_rows.append({"check": f"gpu-check {part}", "ok": False,
                                   "detail": f"stopped by {type(e).__name__}: {e}"[:300]})
            part_seconds[part] = time.monotonic() - started
    print(write_report(True))
    sys.exit(0 if all(r["ok"] for r in check_rows) else 1)


if __name__ == "__main__":
    main()
