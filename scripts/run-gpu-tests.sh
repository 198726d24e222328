#!/usr/bin/env bash
# Runs every staged test executable with ATTNRT_REQUIRE_GPU=1, so a missing GPU fails instead of
# skipping. Staged by scripts/gpu-stage.sh; run from the repository root on the device machine.
# Usage: bash stage/run-gpu-tests.sh [STAGE_DIR] [TEST_NAME_FILTER...]
set -uo pipefail
stage="${1:-stage}"
shift || true
bash "$stage/unpack-stage.sh" "$stage" || exit 1
export ATTNRT_REQUIRE_GPU=1
export ATTNRT_GOLDEN_DIR="$stage/golden"
export ATTNRT_BIN_DIR="$stage/bin"
# cuDNN for the convolutions: the device machine's PyTorch environment holds one (pip's
# nvidia-cudnn-cu13); an ATTNRT_CUDNN_LIB already set wins.
if [ -z "${ATTNRT_CUDNN_LIB:-}" ]; then
  cudnn="$(python3 -c 'import nvidia.cudnn; print(nvidia.cudnn.__path__[0])' 2>/dev/null)" &&
    export ATTNRT_CUDNN_LIB="$cudnn/lib"
fi
echo "ATTNRT_CUDNN_LIB=${ATTNRT_CUDNN_LIB:-(unset: cuDNN from the loader path)}"
failed=0
for t in "$stage"/tests/*; do
  echo "=== $(basename "$t")"
  "$t" --test-threads=1 "$@" || failed=$((failed + 1))
done
echo "test executables failed: $failed"
exit $((failed > 0))
