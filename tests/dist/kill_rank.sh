#!/usr/bin/env bash
# kill -9 of one rank mid-run: every other rank must exit non-zero within 60 s, no rank
# may be left behind, and the last checkpoint must still load. Then a stalled rank.
# Usage: kill_rank.sh MPIRUN MICS_TRAIN CONFIG
set -u
mpirun_bin=$1 bin=$2 config=$3
work=$(mktemp -d /tmp/mics-kill.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
shape=(--set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64 --set model.layers=2
       --set train.micro_batch_size=2 --set train.global_batch_size=8 --set runtime.ranks_per_node=2
       --set mics.partition_size=2 --set checkpoint.dir="$work/ck" --set checkpoint.every=2
       --log-level warn)

"$mpirun_bin" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 4 \
  "$bin" --config "$config" --steps 100000 "${shape[@]}" > "$work/run.log" 2>&1 &
launcher=$!

for _ in $(seq 1 600); do [[ -f "$work/ck/latest" ]] && break; sleep 0.1; done
[[ -f "$work/ck/latest" ]] || { echo "FAIL: no checkpoint appeared"; cat "$work/run.log"; exit 1; }
victim=$(pgrep -f -- "$work/ck" | grep -v "^$launcher\$" | while read -r pid; do
  [[ $(ps -o comm= -p "$pid") == mics-train ]] && echo "$pid"; done | tail -n 1)
[[ -n $victim ]] || { echo "FAIL: no rank found"; exit 1; }
kill -9 "$victim"
start=$(date +%s)
wait "$launcher"
rc=$?
elapsed=$(( $(date +%s) - start ))
echo "killed rank pid $victim; the job exited with $rc after ${elapsed}s"
[[ $rc -ne 0 ]] || { echo "FAIL: the job exited 0 after losing a rank"; exit 1; }
(( elapsed <= 60 )) || { echo "FAIL: the other ranks took ${elapsed}s to stop"; exit 1; }
sleep 1
if pgrep -f -- "$work/ck" > /dev/null; then echo "FAIL: ranks left behind:"; pgrep -af -- "$work/ck"; exit 1; fi

step=$(sed 's/step-0*//' "$work/ck/latest")
"$mpirun_bin" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 4 \
  "$bin" --config "$config" --steps $((step + 1)) "${shape[@]}" --resume latest > "$work/resume.log" 2>&1 \
  || { echo "FAIL: the last checkpoint (step $step) did not load"; cat "$work/resume.log"; exit 1; }
echo "ok: resumed from step $step"

# A rank that stalls (SIGSTOP) instead of dying: the others give up after
# runtime.comm_timeout_s, say so naming the stalled rank, and the whole job ends.
"$mpirun_bin" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 4 \
  "$bin" --config "$config" --steps 100000 "${shape[@]}" --set runtime.comm_timeout_s=5 \
  --set checkpoint.dir="$work/ck2" > "$work/stall.log" 2>&1 &
launcher=$!
for _ in $(seq 1200); do [[ -f "$work/ck2/latest" ]] && break; sleep 0.1; done
victim=$(pgrep -f -- "$work/ck2" | while read -r pid; do
  [[ $(ps -o comm= -p "$pid") == mics-train ]] && echo "$pid"; done | tail -n 1)
[[ -n $victim ]] || { echo "FAIL: no rank found to stall"; exit 1; }
victim_rank=$(tr '\0' '\n' < "/proc/$victim/environ" | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
[[ -n $victim_rank ]] || { echo "FAIL: no OMPI_COMM_WORLD_RANK for pid $victim"; exit 1; }
kill -STOP "$victim"
start=$(date +%s)
wait "$launcher"
rc=$?
elapsed=$(( $(date +%s) - start ))
echo "stalled rank pid $victim; the job exited with $rc after ${elapsed}s"
[[ $rc -ne 0 ]] || { echo "FAIL: the job exited 0 with a stalled rank"; exit 1; }
(( elapsed <= 60 )) || { echo "FAIL: the other ranks took ${elapsed}s to give up"; exit 1; }
grep -q "did not complete within 'runtime.comm_timeout_s' (5 s)" "$work/stall.log" \
  || { echo "FAIL: no timeout message"; cat "$work/stall.log"; exit 1; }
# The liveness pings name the stalled rank, and only it.
named=$(grep -oE "ranks? [0-9, ]+ (of this group )?did not answer a liveness ping" "$work/stall.log" \
        | sed -E 's/ (of this group )?did not answer.*//' | sort -u)
[[ $named == "rank $victim_rank" ]] \
  || { echo "FAIL: expected the timeouts to name rank $victim_rank, they name: ${named:-nothing}"; cat "$work/stall.log"; exit 1; }
echo "the timeouts name rank $victim_rank, the stalled one"
sleep 1
if pgrep -f -- "$work/ck2" > /dev/null; then echo "FAIL: ranks left behind:"; pgrep -af -- "$work/ck2"; exit 1; fi
echo "PASS: a stalled rank ended the job after the timeout"
