#!/usr/bin/env bash
# scripts/sweep through the simulator: BERT 10B on p3dn over 2 and 4 nodes in every mode
# yields a CSV of six predicted points whose groups and traffic are each mode's, with MiCS
# ahead of ZeRO-3 (the paper's claim), and both plots.
# Usage: sweep_simulated.sh SOURCE_DIR MICS_TRAIN
set -u
src=$1 bin=$2
work=$(mktemp -d /tmp/mics-sweep-sim.XXXXXX)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 "$src/scripts/sweep" --config "$src/configs/bert-10b.json" \
  --simulate "$src/configs/clusters/p3dn.json" --nodes 2,4 --bin "$bin" --out "$work/out" \
  || { echo "FAIL: the sweep failed"; exit 1; }
/usr/bin/python3 - "$work/out/sweep.csv" <<'PY' || { echo "FAIL: bad rows in the CSV"; exit 1; }
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert {(r["mode"], r["nodes"]) for r in rows} == {(m, n) for m in ("mics", "zero3", "dp") for n in ("2", "4")}, rows
at = {(r["mode"], r["nodes"]): r for r in rows}
for r in rows:
    assert r["source"] == "simulated" and float(r["samples_per_s"]) > 0 and float(r["step_s"]) > 0, r
    assert int(r["gpus"]) == 8 * int(r["nodes"]), r  # p3dn: 8 GPUs a node
    if r["mode"] == "zero3": assert int(r["partition_size"]) == int(r["gpus"]) and float(r["bytes_inter"]) > 0, r
    if r["mode"] == "dp": assert int(r["partition_size"]) == 1, r
    if r["mode"] == "mics": assert int(r["partition_size"]) == 8, r  # bert-10b.json's p: one node
for n in ("2", "4"):
    mics, zero3 = at[("mics", n)], at[("zero3", n)]
    assert float(mics["samples_per_s"]) > float(zero3["samples_per_s"]), (mics, zero3)
    assert float(mics["bytes_inter"]) < float(zero3["bytes_inter"]), (mics, zero3)
print(f"PASS: {len(rows)} simulated points; MiCS ahead of ZeRO-3 at 2 and 4 nodes")
PY
for png in throughput.png efficiency.png; do
  head -c 8 "$work/out/$png" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a" || { echo "FAIL: $png is not a PNG"; exit 1; }
done
