#!/usr/bin/env bash
# Preemption: a stop signal makes every rank checkpoint the same step and exit 3; the
# resumed run's losses equal an uninterrupted run's bit for bit. Covers SIGTERM to one
# process, SIGKILL (a crash: the metrics file keeps one line per step), SIGUSR1 to mpirun
# (which forwards it to every rank), Ctrl-C to scripts/mpirun-graceful.sh, and a Slurm
# batch job that is signalled, requeues itself and finishes on its own.
# Usage: preemption.sh SOURCE_DIR MPIRUN MICS_TRAIN
set -u
src=$1 mpirun_bin=$2 bin=$3
work=$(mktemp -d /tmp/mics-preempt.XXXXXX)
cleanup() { [[ -n ${MICS_SLURM_DIR:-} ]] && "$src/scripts/slurm/local-cluster.sh" down; rm -rf "$work"; }
trap cleanup EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun_=("$mpirun_bin" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1)
steps=400
shape=(--config "$src/configs/gpt-tiny.json" --steps $steps --set log.every=1 --set train.seq_len=32
       --set model.max_positions=32 --set model.hidden=64 --set model.layers=2
       --set train.micro_batch_size=2 --set train.global_batch_size=8 --log-level warn)
fail() { echo "FAIL: $*"; exit 1; }
losses() { grep -o '"loss":[^,]*' "$1"; }
same() { diff <(losses "$1") <(losses "$2") > /dev/null; }

# Waits until checkpoint dir $1 has a checkpoint, then a little more.
await_checkpoint() {
  for _ in $(seq 1200); do [[ -f $1/latest ]] && { sleep 0.3; return 0; }; sleep 0.1; done
  cat "$work"/*.log "$work"/job.out 2>/dev/null | tail -n 30
  fail "no checkpoint appeared in $1 within 120 s"
}

# --- one process, SIGTERM ---
"$bin" "${shape[@]}" --metrics "$work/full1.jsonl" || fail "uninterrupted run"
"$bin" "${shape[@]}" --set checkpoint.dir="$work/ck1" --set checkpoint.every=5 --metrics "$work/run1.jsonl" \
  2> "$work/run1.log" &
pid=$!
await_checkpoint "$work/ck1"
kill -TERM $pid
wait $pid; rc=$?
[[ $rc -eq 3 ]] || fail "one process: exit $rc after SIGTERM, expected 3"
grep -q "^mics-train: SIGTERM received: stopping after this step" "$work/run1.log" \
  || { cat "$work/run1.log"; fail "one process: the SIGTERM was not acknowledged when it arrived"; }
stopped=$(cat "$work/ck1/latest")
"$bin" "${shape[@]}" --set checkpoint.dir="$work/ck1" --set checkpoint.every=5 --metrics "$work/run1.jsonl" --resume auto \
  || fail "one process: resume"
same "$work/full1.jsonl" "$work/run1.jsonl" || fail "one process: losses after SIGTERM + resume differ"
echo "[${SECONDS}s] ok: one process stopped at $stopped by SIGTERM, resumed bit for bit"

# --- one process, SIGKILL (a crash): the resume trains the steps after its checkpoint
# again, and the metrics file keeps one line per step (those of the crashed run dropped) ---
"$bin" "${shape[@]}" --set checkpoint.dir="$work/ck9" --set checkpoint.every=50 --metrics "$work/run9.jsonl" \
  2> "$work/run9.log" &
pid=$!
await_checkpoint "$work/ck9"
kill -KILL $pid
{ wait $pid; } 2> /dev/null; rc=$?  # (without bash's "Killed" line)
[[ $rc -eq 137 ]] || fail "one process: exit $rc after SIGKILL, expected 137 (did the run end first?)"
saved=$(sed -E 's/step-0*//' "$work/ck9/latest")
logged=$(losses "$work/run9.jsonl" | wc -l)
((logged > saved)) || fail "SIGKILL: no step logged after the checkpoint at step $saved; the case tests nothing"
"$bin" "${shape[@]}" --set checkpoint.dir="$work/ck9" --set checkpoint.every=50 --metrics "$work/run9.jsonl" --resume auto \
  2> "$work/resume9.log" || { cat "$work/resume9.log"; fail "one process: resume after SIGKILL"; }
same "$work/full1.jsonl" "$work/run9.jsonl" || fail "SIGKILL + resume: the metrics differ from an uninterrupted run's"
echo "[${SECONDS}s] ok: killed at step $logged, resumed from step $saved: one metrics line per step, bit for bit"

# --- one process, a second SIGTERM: ends it at once, as announced, without a checkpoint ---
# Steps of seconds (a wider model), checkpoints only when stopped: the second signal, sent
# once the first is acknowledged, lands while the first one's step still runs.
"$bin" --config "$src/configs/gpt-tiny.json" --steps 100 --set model.hidden=512 --set train.global_batch_size=8 \
  --set checkpoint.dir="$work/ck2" --set checkpoint.every=0 --set log.every=1 --metrics "$work/run2.jsonl" \
  2> "$work/run2.log" &
pid=$!
for _ in $(seq 600); do [[ -s $work/run2.jsonl ]] && break; sleep 0.1; done
[[ -s $work/run2.jsonl ]] || { cat "$work/run2.log"; fail "the wide model's first step did not finish within 60 s"; }
kill -TERM $pid
for _ in $(seq 100); do grep -q "SIGTERM received" "$work/run2.log" && break; sleep 0.02; done
kill -TERM $pid
wait $pid; rc=$?
[[ $rc -eq 143 ]] || { cat "$work/run2.log"; fail "one process: exit $rc after two SIGTERMs, expected 143"; }
[[ -z $(ls -A "$work/ck2") ]] || fail "one process: a second SIGTERM still wrote a checkpoint: $(ls -A "$work/ck2")"
echo "[${SECONDS}s] ok: a second SIGTERM ended the run at once (exit 143, no checkpoint)"

# --- mpirun, 4 ranks, p = 2, SIGUSR1 to mpirun ---
place=(--set runtime.ranks_per_node=2 --set mics.partition_size=2 --set train.global_batch_size=16)
"${mpirun_[@]}" -np 4 "$bin" "${shape[@]}" "${place[@]}" --metrics "$work/full4.jsonl" || fail "uninterrupted 4-rank run"
"${mpirun_[@]}" -np 4 "$bin" "${shape[@]}" "${place[@]}" --set checkpoint.dir="$work/ck4" --set checkpoint.every=5 \
  --metrics "$work/run4.jsonl" > "$work/run4.log" 2>&1 &
pid=$!
await_checkpoint "$work/ck4"
kill -USR1 $pid
wait $pid; rc=$?
[[ $rc -eq 3 ]] || { cat "$work/run4.log"; fail "mpirun: exit $rc after SIGUSR1, expected 3"; }
[[ $(grep -c "^mics-train: SIGUSR1 received: stopping after this step" "$work/run4.log") -eq 1 ]] \
  || { cat "$work/run4.log"; fail "mpirun: the SIGUSR1 was not acknowledged once (by rank 0)"; }
stopped=$(cat "$work/ck4/latest")
"${mpirun_[@]}" -np 4 "$bin" "${shape[@]}" "${place[@]}" --set checkpoint.dir="$work/ck4" --set checkpoint.every=5 \
  --metrics "$work/run4.jsonl" --resume auto > "$work/resume4.log" 2>&1 || { cat "$work/resume4.log"; fail "mpirun: resume"; }
same "$work/full4.jsonl" "$work/run4.jsonl" || fail "mpirun: losses after SIGUSR1 + resume differ"
echo "[${SECONDS}s] ok: 4 ranks stopped at $stopped by SIGUSR1, resumed bit for bit"

# --- Ctrl-C under mpirun, through scripts/mpirun-graceful.sh ---
# A terminal sends SIGINT to its foreground process group: here the wrapper's own group
# (job control on, so the background job has one and does not ignore SIGINT).
set -m
MPIRUN=$mpirun_bin "$src/scripts/mpirun-graceful.sh" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
  -np 4 "$bin" "${shape[@]}" "${place[@]}" --set checkpoint.dir="$work/ckc" --set checkpoint.every=5 \
  --metrics "$work/ctrlc.jsonl" > "$work/ctrlc.log" 2>&1 &
pid=$!
set +m
await_checkpoint "$work/ckc"
kill -INT -- -"$pid"
wait $pid; rc=$?
[[ $rc -eq 3 ]] || { cat "$work/ctrlc.log"; fail "Ctrl-C: exit $rc, expected 3"; }
steps=$(grep -oE "\[rank [0-9]\] .*stop requested by SIGUSR1: checkpointing step [0-9]+" "$work/ctrlc.log" \
        | sed -E 's/.*\[rank ([0-9])\].* step ([0-9]+)/\1 \2/' | sort -u)
[[ $(wc -l <<< "$steps") -eq 4 && $(cut -d' ' -f2 <<< "$steps" | sort -u | wc -l) -eq 1 ]] \
  || { cat "$work/ctrlc.log"; fail "Ctrl-C: the 4 ranks did not all checkpoint one step: $steps"; }
step=$(head -1 <<< "$steps" | cut -d' ' -f2)
[[ $(cat "$work/ckc/latest") == $(printf "step-%06d" "$step") ]] || fail "Ctrl-C: latest is $(cat "$work/ckc/latest"), not step $step"
echo "[${SECONDS}s] ok: Ctrl-C through scripts/mpirun-graceful.sh: every rank checkpointed step $step, exit 3"

# --- Slurm: signal, requeue, resume by itself ---
if [[ $EUID -ne 0 ]] || ! command -v slurmctld > /dev/null; then echo "PASS (Slurm part skipped: needs root and Slurm)"; exit 0; fi
export MICS_SLURM_DIR=$work/cluster MICS_SLURM_PORT=$((7700 + RANDOM % 500))
"$src/scripts/slurm/local-cluster.sh" up 2 > /dev/null || fail "the local Slurm did not start"
source "$MICS_SLURM_DIR/env.sh"
job=$(cd "$work" && MICS_TRAIN=$bin sbatch --parsable -N 2 --ntasks-per-node=2 -o "$work/job.out" \
      "$src/scripts/slurm/mics-train.sbatch" "${shape[@]:1}" "${place[@]}" --set checkpoint.dir="$work/cks" \
      --set checkpoint.every=5 --metrics "$work/slurm.jsonl") || fail "sbatch refused the job"
await_checkpoint "$work/cks"
echo "[${SECONDS}s] signalling job $job"
scancel --signal=USR1 "$job" || fail "scancel --signal"
released=0
for _ in $(seq 900); do
  state=$(scontrol show job "$job" 2>/dev/null | grep -oE '(JobState|Reason|Restarts|ExitCode)=[^ ]+' | tr '\n' ' ')
  # Done: out of the queue after its restart (a requeue passes through transient states).
  if [[ $state == *Restarts=1* ]] && ! squeue -h -j "$job" 2>/dev/null | grep -q .; then break; fi
  # Slurm lets a requeued job start again only after a delay (its BeginTime); the test
  # does not wait for that and releases it at once.
  # Released after a few seconds: the step of the first run must be cleaned up on the
  # nodes first (its PMIx directory has the same name as the restarted step's).
  if [[ $state == *JobState=PENDING*Reason=BeginTime* ]]; then
    ((released == 0)) && released=$SECONDS
    if ((released > 0 && SECONDS - released >= 5)); then
      echo "[${SECONDS}s] job $job requeued; releasing it now"
      scontrol update JobId="$job" StartTime=now && released=-1
    fi
  fi
  sleep 0.2
done
# The state read above can predate the squeue check that ended the loop (the job finished
# in between): read it once more now that the job has left the queue.
state=$(scontrol show job "$job" 2>/dev/null | grep -oE '(JobState|Reason|Restarts|ExitCode)=[^ ]+' | tr '\n' ' ')
cat "$work/job.out"; tail -5 "$MICS_SLURM_DIR"/log/slurmctld.log
[[ $state == *JobState=COMPLETED*Restarts=1*ExitCode=0:0* || $state == *JobState=COMPLETED*ExitCode=0:0*Restarts=1* ]] \
  || fail "batch job $job did not finish after one requeue: $state"
grep -q "requeueing job" "$work/job.out" || fail "the job was not requeued by its script"
same "$work/full4.jsonl" "$work/slurm.jsonl" || { diff <(losses "$work/full4.jsonl") <(losses "$work/slurm.jsonl") | head; grep -o "\"step\":[0-9]*" "$work/slurm.jsonl" | head -3; wc -l "$work/slurm.jsonl"; fail "Slurm: losses after requeue differ from the uninterrupted run"; }
echo "[${SECONDS}s] PASS: the Slurm job was signalled, requeued itself and resumed bit for bit"
