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
failed=0
for t in "$stage"/tests/*; do
  echo "=== $(basename "$t")"
  "$t" --test-threads=1 "$@" || failed=$((failed + 1))
done
echo "test executables failed: $failed"
exit $((failed > 0))
