#!/usr/bin/env bash
# Builds (installing what is missing), then runs the whole suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure -j "${MICS_TEST_JOBS:-2}" "$@"
