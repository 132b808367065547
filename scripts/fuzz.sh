#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (address + undefined-behaviour sanitizers) into
# build-fuzz/ and runs each for a bounded time: the config parser, the token-shard reader,
# the safetensors reader and the checkpoint manifest reader. Regression inputs in
# tests/data/fuzz/<target>/ are replayed first; a crash leaves its input in build-fuzz/.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v clang++ > /dev/null || { echo "fuzz: clang++ is missing (apt-get install clang)"; exit 1; }
[[ -f build-fuzz/build.ninja ]] || cmake -S tests/fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ > /dev/null
cmake --build build-fuzz -j "$(nproc)"
failed=0
for target in config token_shards safetensors manifest; do
  corpus=build-fuzz/corpus-$target
  mkdir -p "$corpus"
  seeds=()
  [[ -d tests/data/fuzz/$target ]] && seeds=(tests/data/fuzz/$target)
  [[ $target == config ]] && cp configs/*.json "$corpus"/ 2>/dev/null || true
  echo "fuzz: $target for ${seconds}s"
  if ! (cd build-fuzz && ./fuzz_$target -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=0 \
          "corpus-$target" "${seeds[@]/#/../}" > "fuzz-$target.log" 2>&1); then
    echo "fuzz: $target FAILED"; tail -n 40 "build-fuzz/fuzz-$target.log"; failed=$((failed + 1))
  else
    grep -E '^Done' "build-fuzz/fuzz-$target.log" || true
  fi
done
echo "$((4 - failed)) passed, $failed failed"
exit $((failed > 0))
