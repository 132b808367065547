#!/usr/bin/env bash
# The same training run through a real local Slurm (2 emulated nodes, srun -N 2 -n 4 and
# the project's sbatch script) and under mpirun gives the same losses, bit for bit.
# Usage: slurm_launch.sh SOURCE_DIR MPIRUN MICS_TRAIN     (exit 77: skipped)
set -u
src=$1 mpirun_bin=$2 bin=$3
if [[ $EUID -ne 0 ]] || ! command -v slurmctld >/dev/null || ! command -v srun >/dev/null; then
  echo "SKIP: needs root and Slurm (scripts/setup.sh installs it)"; exit 77
fi
work=$(mktemp -d /tmp/mics-slurm-test.XXXXXX)
export MICS_SLURM_DIR=$work/cluster MICS_SLURM_PORT=$((7100 + RANDOM % 500))
trap '"$src/scripts/slurm/local-cluster.sh" down; rm -rf "$work"' EXIT
"$src/scripts/slurm/local-cluster.sh" up 2 || { echo "FAIL: the local Slurm did not start"; exit 1; }
source "$MICS_SLURM_DIR/env.sh"
export OMP_NUM_THREADS=1
args=(--config "$src/configs/bert-tiny.json" --steps 4 --set log.every=1 --set train.seq_len=32
      --set model.max_positions=32 --set model.hidden=64 --set model.layers=2
      --set train.micro_batch_size=2 --set train.global_batch_size=16 --set mics.partition_size=4
      --log-level warn)

timeout 120 srun -N 2 -n 4 --ntasks-per-node=2 "$bin" "${args[@]}" --metrics "$work/srun.jsonl" \
  || { echo "FAIL: srun run"; exit 1; }
timeout 120 "$mpirun_bin" --oversubscribe --bind-to none -np 4 "$bin" "${args[@]}" \
  --set runtime.ranks_per_node=2 --metrics "$work/mpirun.jsonl" || { echo "FAIL: mpirun run"; exit 1; }
job=$(cd "$work" && MICS_TRAIN=$bin sbatch --parsable -N 2 --ntasks-per-node=2 -o "$work/job-%j.out" \
      "$src/scripts/slurm/mics-train.sbatch" "${args[@]:1}" --metrics "$work/sbatch.jsonl") \
  || { echo "FAIL: sbatch refused the job"; exit 1; }
for _ in $(seq 600); do squeue -h -j "$job" 2>/dev/null | grep -q . || break; sleep 0.2; done
state=$(scontrol show job "$job" 2>/dev/null | grep -oE '(JobState|ExitCode)=[^ ]+' | tr '\n' ' ')
cat "$work"/job-*.out
[[ $state == *JobState=COMPLETED*ExitCode=0:0* ]] || { echo "FAIL: batch job $job: $state"; exit 1; }

losses() { grep -o '"loss":[^,]*' "$1"; }
for f in srun sbatch; do
  if ! diff <(losses "$work/mpirun.jsonl") <(losses "$work/$f.jsonl"); then
    echo "FAIL: $f losses differ from mpirun's"; exit 1
  fi
done
[[ $(losses "$work/srun.jsonl" | wc -l) -eq 4 ]] || { echo "FAIL: expected 4 logged steps"; exit 1; }
echo "PASS: srun, sbatch and mpirun agree on 4 steps"
losses "$work/srun.jsonl"
