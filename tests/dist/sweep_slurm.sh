#!/usr/bin/env bash
# scripts/sweep end to end through a real local Slurm (2 emulated nodes): a weak-scaling
# sweep of a tiny BERT over 1 and 2 nodes in every mode yields the CSV and both PNG plots.
# Usage: sweep_slurm.sh SOURCE_DIR MICS_TRAIN     (exit 77: skipped)
set -u
src=$1 bin=$2
if [[ $EUID -ne 0 ]] || ! command -v slurmctld >/dev/null || ! command -v srun >/dev/null; then
  echo "SKIP: needs root and Slurm (scripts/setup.sh installs it)"; exit 77
fi
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || { echo "SKIP: needs python3-matplotlib"; exit 77; }
work=$(mktemp -d /tmp/mics-sweep-test.XXXXXX)
export MICS_SLURM_DIR=$work/cluster MICS_SLURM_PORT=$((7600 + RANDOM % 500))
trap '"$src/scripts/slurm/local-cluster.sh" down; rm -rf "$work"' EXIT
"$src/scripts/slurm/local-cluster.sh" up 2 || { echo "FAIL: the local Slurm did not start"; exit 1; }
source "$MICS_SLURM_DIR/env.sh"
export OMP_NUM_THREADS=1

cd "$work"
timeout 600 "$src/scripts/sweep" --config "$src/configs/bert-tiny.json" --slurm --bin "$bin" \
  --nodes 1,2 --ranks-per-node 2 --partition-size 2 --steps 3 --out "$work/out" \
  --set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64 --set model.layers=2 \
  --set train.micro_batch_size=2 || { echo "FAIL: the sweep failed"; cat "$work"/out/*.out; exit 1; }

csv=$work/out/sweep.csv
cat "$csv"
# A header and one row per mode and node count, every one measured with a positive rate.
[[ $(wc -l <"$csv") -eq 7 ]] || { echo "FAIL: expected 6 points in $csv"; exit 1; }
/usr/bin/python3 - "$csv" <<'PY' || { echo "FAIL: bad rows in the CSV"; exit 1; }
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert {(r["mode"], r["nodes"]) for r in rows} == {(m, n) for m in ("mics", "zero3", "dp") for n in ("1", "2")}, rows
for r in rows:
    assert r["source"] == "measured" and float(r["samples_per_s"]) > 0 and float(r["step_s"]) > 0, r
    assert int(r["gpus"]) == 2 * int(r["nodes"]), r
    # ZeRO-3 shards over every rank; on two nodes its gathers cross nodes, data parallel's never gather.
    if r["mode"] == "zero3": assert int(r["partition_size"]) == int(r["gpus"]), r
    if r["mode"] == "dp": assert int(r["partition_size"]) == 1, r
    if r["mode"] == "zero3" and r["nodes"] == "2": assert float(r["bytes_inter"]) > 0, r
    if r["nodes"] == "1": assert float(r["bytes_inter"]) == 0 and abs(float(r["scaling_efficiency"]) - 1) < 1e-12, r
PY
for png in throughput.png efficiency.png; do
  head -c 8 "$work/out/$png" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a" || { echo "FAIL: $png is not a PNG"; exit 1; }
done
echo "PASS: the Slurm sweep wrote sweep.csv with 6 measured points and both plots"
