#!/usr/bin/env bash
# The whole GPU check, on a GPU machine, in one call: the CUDA tests, CUDA-vs-CPU training
# numerics, 4 ranks on one GPU against 1 rank, NCCL, and the benchmark with its PyTorch
# peer (scripts/gpu_check.py says what each part checks). Uses the binaries and libraries
# that scripts/gpu-bundle.sh packed into gpu-carry/ on the development machine:
#   scripts/gpu-bundle.sh                                   (here)
#   scripts/gpu-check.sh [bench] [checks] [bench-more] [profile] [ops]   (there; default bench
#       checks: one 10-minute call; then `scripts/gpu-check.sh bench-more profile ops --report
#       gpu-results-more`)
# Writes $OUT/gpu-results.md and .json (docs/ without $OUT); exit 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# gpu-bundle.sh packs bin/ and lib/ into one xz archive (the carry limit); unpacked once.
if [[ -f gpu-carry/bundle.tar.xz && ! -x gpu-carry/bin/mics-train ]]; then
  # Python's lzma, not tar -J: the GPU machine's image may lack the xz program.
  python3 -c 'import tarfile, sys; t = tarfile.open("gpu-carry/bundle.tar.xz")
t.extractall("gpu-carry", **({"filter": "tar"} if sys.version_info >= (3, 12) else {}))'
fi
[[ -x gpu-carry/bin/mics-train ]] || { echo "gpu-check: gpu-carry/ is missing: run scripts/gpu-bundle.sh and carry gpu-carry" >&2; exit 2; }
exec python3 scripts/gpu_check.py "$@"
