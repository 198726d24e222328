#!/usr/bin/env bash
# Installs the pinned CUDA compiler (nvcc 13.0, from PyPI) into .cuda/ in this repository and
# records its path in .cuda/nvcc-path, where build.rs finds it. Idempotent.
#
# The versions are pinned on purpose: PTX from a newer nvcc needs a newer driver than the GPU
# machines have (CUDA 13.0).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cuda"
pkgs=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
python="${PYTHON:-python3}"
if [ ! -x "$dir/venv/bin/python" ]; then
  "$python" -m venv "$dir/venv"
fi
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"
nvcc="$("$dir/venv/bin/python" - <<'PY'
import pathlib, nvidia
for base in nvidia.__path__:
    p = pathlib.Path(base) / "cu13" / "bin" / "nvcc"
    if p.is_file():
        print(p)
        break
PY
)"
if [ -z "$nvcc" ]; then
  echo "setup-cuda.sh: nvcc not found in the installed packages under $dir/venv" >&2
  exit 1
fi
"$nvcc" --version | tail -n 1
echo "$nvcc" > "$dir/nvcc-path"
echo "nvcc: $nvcc (recorded in .cuda/nvcc-path)"
