#!/usr/bin/env bash
# Builds (installing what is missing), then runs the whole suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
# One test at a time: each already uses every core (OpenMP + OpenBLAS), and
# oversubscribed OpenMP threads spin against each other.
ctest --output-on-failure -j "${MICS_TEST_JOBS:-1}" "$@"
