#!/usr/bin/env python3
"""scripts/gpu_check.py's report, off the GPU machine: its `ops` and `bench` parts run with this build's
binaries and a stand-in nvidia-smi. Device time is scarce, so what the GPU call writes is
checked here first: the markdown and JSON reports, a failed mics-bench-ops run (no GPU
here) as a failed check naming its slice and the exit status following the checks, or
(on a GPU) each slice's JSON beside the report.

    gpu_check_report.py SOURCE_DIR BIN_DIR
"""
import json
import os
import stat
import subprocess
import sys
import tempfile


def main():
    source, bindir = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        fake = os.path.join(tmp, "nvidia-smi")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'Stand-in GPU, 0.0, 1 MiB'\n")
        os.chmod(fake, os.stat(fake).st_mode | stat.S_IEXEC)
        out = os.path.join(tmp, "out")
        env = dict(os.environ, OUT=out, PATH=tmp + os.pathsep + os.environ["PATH"])
        p = subprocess.run([sys.executable, os.path.join(source, "scripts", "gpu_check.py"), "ops", "--bin", bindir,
                            "--report", "r"], env=env, capture_output=True, text=True, timeout=600)
        md = open(os.path.join(out, "r.md")).read()
        report = json.load(open(os.path.join(out, "r.json")))
        assert md.startswith("# GPU check ("), md[:200]
        assert "Card: Stand-in GPU, 0.0, 1 MiB" in md, md[:400]
        assert report["finished"] is True and report["card"] == "Stand-in GPU, 0.0, 1 MiB", report
        assert report["build"].startswith("mics-train "), report["build"]
        # each part's wall time, for planning the next call within the device's limit
        assert list(report["part_seconds"]) == ["ops"] and report["part_seconds"]["ops"] >= 0, report["part_seconds"]
        assert "Wall time: ops " in md, md[:400]
        runs = report["profile"]
        assert [r["run"] for r in runs] == [f"mics-bench-ops --backend cuda --config configs/bench/{s}.json"
                                            for s in ("bert-10b-slice", "gpt2-10b-slice")], runs
        failed = {c["check"] for c in report["checks"] if not c["ok"]}
        for r, slice_name in zip(runs, ("bert-10b-slice", "gpt2-10b-slice")):
            assert r["run"] in md, r["run"]
            if r["exit"] != 0:  # no GPU: the run fails, and says so as a check
                assert f"mics-bench-ops at {slice_name}'s shapes" in failed, (failed, r)
                assert f"(exit {r['exit']})" in md
            else:
                ops = json.load(open(os.path.join(out, f"r-ops-{slice_name}.json")))
                assert ops["backend"] == "cuda" and ops["ops"], ops
        assert p.returncode == (1 if failed else 0), (p.returncode, failed, p.stdout[-2000:], p.stderr[-2000:])
        # The benchmark's variants: without a GPU every mics-train run stops at the device
        # check, which comes after the config and every override are read, so a variant whose
        # keys the engine refuses shows here rather than in a GPU call.
        p = subprocess.run([sys.executable, os.path.join(source, "scripts", "gpu_check.py"), "bench", "--bin", bindir,
                            "--report", "b"], env=env, capture_output=True, text=True, timeout=600)
        bench = json.load(open(os.path.join(out, "b.json")))
        variants = [r for r in bench["bench"] if r["engine"] == "mics-train"]
        assert len(variants) >= 2 * 6 and {r["bench"] for r in variants} == {"bert-10b-slice", "gpt2-10b-slice"}, variants
        for r in variants:
            error = r.get("error", "")  # (a CPU-only build stops at the same point, saying so)
            assert "no CUDA device is visible" in error or '"cuda" is not available in this build' in error, r
        assert list(bench["part_seconds"]) == ["bench"], bench["part_seconds"]
    print(f"gpu_check report: checked ({len(runs)} mics-bench-ops runs, {len(failed)} failed checks, "
          f"{len(variants)} benchmark variants' settings)")


if __name__ == "__main__":
    main()
