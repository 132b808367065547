#!/usr/bin/env bash
# Builds if needed, then trains configs/bert-tiny.json on the CPU and shows the loss falling.
# Extra arguments go to mics-train, e.g.  scripts/run.sh --steps 50 --metrics out.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/mics-train ]] || scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec build/mics-train --config configs/bert-tiny.json "$@"
