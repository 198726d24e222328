#!/usr/bin/env bash
# Installs the pinned CUDA compiler (nvcc 13.0) and cuDNN 9 (with the cuBLAS and NVRTC it
# loads), all from PyPI, into .cuda/ in this repository. Records nvcc's path in .cuda/nvcc-path,
# where build.rs finds it, and cuDNN's folder in .cuda/cudnn-path, where the library finds it at
# run time (src/gpu/cudnn.rs). Idempotent.
#
# The versions are pinned on purpose: PTX from a newer nvcc needs a newer driver than the GPU
# machines have (CUDA 13.0). cuDNN, cuBLAS and NVRTC are the versions PyTorch 2.11 (CUDA 13.0)
# pins, the set the GPU machines run: pip would otherwise pull the newest cuBLAS (a later CUDA
# 13 minor) as cuDNN's unpinned dependency.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cuda"
pkgs=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cudnn-cu13==9.19.0.56
  nvidia-cublas==13.1.0.3
  nvidia-cuda-nvrtc==13.0.88
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

# cuDNN's folder (libcudnn.so.9 and its sub-libraries; they find cuBLAS and NVRTC through their
# run path, ../../cu13/lib).
cudnn="$("$dir/venv/bin/python" - <<'PY'
import pathlib, nvidia
for base in nvidia.__path__:
    p = pathlib.Path(base) / "cudnn" / "lib"
    if (p / "libcudnn.so.9").is_file():
        print(p)
        break
PY
)"
if [ -z "$cudnn" ]; then
  echo "setup-cuda.sh: libcudnn.so.9 not found in the installed packages under $dir/venv" >&2
  exit 1
fi
echo "$cudnn" > "$dir/cudnn-path"
echo "cuDNN: $cudnn (recorded in .cuda/cudnn-path)"
