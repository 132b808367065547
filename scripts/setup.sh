#!/usr/bin/env bash
# Installs what is missing from Debian's packages, then configures and builds build/ (Release).
# Safe to run again: it installs nothing that is present and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ pkg-config libopenmpi-dev openmpi-bin nlohmann-json3-dev
          libspdlog-dev libcli11-dev libgtest-dev libopenblas-openmp-dev
          # a local Slurm for the launch tests (libpmix-dev: Slurm's PMIx plugin loads it)
          slurmctld slurmd slurm-client libpmix-dev
          # the fuzz targets (scripts/fuzz.sh): clang with libFuzzer and the sanitizer runtimes
          clang libclang-rt-14-dev
          # tests/interchange/hf_numerics.py: PyTorch (CPU) and what transformers imports
          python3-torch python3-numpy python3-regex python3-requests python3-tqdm python3-filelock
          python3-packaging python3-yaml python3-pip
          # scripts/sweep: the weak-scaling plots
          python3-matplotlib)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Hugging Face transformers for the numerics check, pinned to a release that supports
# Debian's torch 1.13, without its dependencies so that pip never brings a PyPI torch.
hf_pins=(transformers==4.40.2 huggingface_hub==0.23.4 safetensors==0.4.3)
# (importlib.metadata reads the version without importing the package: quick when present)
if ! /usr/bin/python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("transformers") != "4.40.2")' 2>/dev/null; then
  echo "setup: installing ${hf_pins[*]} for Debian's python3"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd /usr/bin/python3 -m pip install -q --break-system-packages --no-deps "${hf_pins[@]}" \
    || echo "setup: warning: pip could not install transformers; interchange.hf_numerics will be skipped" >&2
fi

# nvcc is not on PATH by default; the CUDA backend is built whenever it is found.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${MICS_CMAKE_ARGS:-}
fi
cmake --build build -j "$(nproc)"
