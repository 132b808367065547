#!/usr/bin/env bash
# A shard truncated during a 2-rank run (a preprocessing job rewriting it in place): the
# rank whose next window lies past the new end names the file, the other says another rank
# cannot read its samples, and both exit 2 together, agreed: not killed by mpirun (told here
# not to) nor by a collective's timeout (10 s here).
# Usage: data_truncated.sh MPIRUN MICS_TRAIN CONFIG
set -u
mpirun_bin=$1 bin=$2 config=$3
work=$(mktemp -d /tmp/mics-truncated.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() { echo "FAIL: $*"; cat "$work/run.log"; exit 1; }

# Windows of seq_len + 1 = 33 tokens read in order, one per rank a step: step s reads window
# 2s-2 on rank 0 and 2s-1 on rank 1. Cut after window 2K, step K+1 fails on rank 1 alone.
steps=1200 window=33 K=500
tokens=$((2 * steps * window))
le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
{ le32 20240520; le32 1; le32 $tokens; head -c $((253 * 4)) /dev/zero; head -c $((2 * tokens)) /dev/zero; } > "$work/s.bin"

# Each rank's exit code is printed by a shell around it, since mpirun (told not to kill the
# job when one exits non-zero) does not report them.
"$mpirun_bin" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 --mca orte_abort_on_non_zero_status 0 -np 2 \
  bash -c '"$@"; echo "mics-train exited $?"' _ "$bin" --config "$config" --steps $steps --set data.source=shards --set data.path="$work/s.bin" \
  --set data.shuffle=false --set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64 \
  --set model.layers=2 --set train.micro_batch_size=1 --set train.global_batch_size=2 --set log.every=1 \
  --set runtime.comm_timeout_s=10 --metrics "$work/m.jsonl" --log-level warn > "$work/run.log" 2>&1 &
launcher=$!
for _ in $(seq 1 1200); do [[ -s $work/m.jsonl ]] && break; sleep 0.05; done
truncate -s $((1024 + 2 * window * (2 * K + 1))) "$work/s.bin"
done_steps=$(wc -l < "$work/m.jsonl")
((done_steps > 0 && done_steps <= K)) || fail "cut at step $done_steps, not within steps 1..$K"
timeout 120 tail --pid=$launcher -f /dev/null || fail "the job did not end within 120 s"
wait $launcher
[[ $(grep -c "^mics-train exited 2$" "$work/run.log") -eq 2 ]] || fail "not both ranks exited 2"
! grep -q "did not complete within 'runtime.comm_timeout_s'" "$work/run.log" || fail "a collective's timeout, not an agreement, ended the run"
grep -q "mics-train: error: shard '$work/s.bin' is now $((1024 + 2 * window * (2 * K + 1))) bytes" "$work/run.log" \
  || fail "no rank named the truncated shard"
grep -q "mics-train: error: another rank cannot read its samples of step $((K + 1)); see its message." "$work/run.log" \
  || fail "rank 0 did not stop at step $((K + 1)) with the rank that could not read"
[[ $(wc -l < "$work/m.jsonl") -eq $K ]] || fail "$(wc -l < "$work/m.jsonl") steps logged, expected $K"
echo "PASS: cut during step $done_steps; step $((K + 1)) stopped both ranks, exit 2"
