#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine, here, and packs it into
# gpu-carry/bundle.tar.xz (gpu-carry/ is git-ignored through .git/info/exclude): bin/
# (mics-train, the CUDA tests, mics-bench-ops) and lib/ (the shared libraries Debian
# installs here but the GPU machine lacks: OpenBLAS and its runtimes, spdlog, fmt,
# OpenMPI's C++ bindings). Hopper only by
# default to keep the bundle under the device tool's 64 MiB: MICS_GPU_ARCHS=90.
#   scripts/gpu-bundle.sh          then (device tool) run scripts/gpu-check.sh, carry gpu-carry
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
archs=${MICS_GPU_ARCHS:-90}
cmake -S . -B build-gpucheck -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="$archs" >/dev/null
ninja -C build-gpucheck mics-train mics-bench-ops tests/test_cuda_ops tests/test_cuda_model
rm -rf gpu-carry && mkdir -p gpu-carry/bin gpu-carry/lib
cp build-gpucheck/mics-train build-gpucheck/mics-bench-ops build-gpucheck/tests/test_cuda_ops \
   build-gpucheck/tests/test_cuda_model gpu-carry/bin/
strip gpu-carry/bin/*
for lib in libopenblas.so.0 libgomp.so.1 libgfortran.so.5 libquadmath.so.0 libspdlog.so.1.10 libfmt.so.9 libmpi_cxx.so.40; do
  path=$(ldd gpu-carry/bin/mics-train | awk -v l="$lib" '$1 == l {print $3}')
  [[ -n $path ]] && cp -L "$path" gpu-carry/lib/
done
# Packed: the device tool carries at most 64 MiB, and bin/ + lib/ are about 63 (OpenBLAS alone
# 37); xz brings them to about 11. scripts/gpu-check.sh unpacks gpu-carry/bundle.tar.xz.
tar -C gpu-carry -cJf gpu-carry/bundle.tar.xz bin lib
rm -rf gpu-carry/bin gpu-carry/lib
grep -qx '/gpu-carry/' .git/info/exclude 2>/dev/null || echo '/gpu-carry/' >>.git/info/exclude
du -sh gpu-carry
