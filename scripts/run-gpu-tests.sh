#!/usr/bin/env bash
# Runs every staged test executable with ATTNRT_REQUIRE_GPU=1, so a missing GPU fails instead of
# skipping. Staged by scripts/gpu-stage.sh; run from the repository root on the device machine.
# Usage: bash stage/run-gpu-tests.sh [STAGE_DIR] [TEST_NAME_FILTER...]
set -uo pipefail
stage="${1:-stage}"
shift || true
if [ -f "$stage/binaries.tar.xz" ] && [ ! -d "$stage/tests" ]; then
  # Python's tarfile, since the device machine may lack the xz tool.
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$stage/binaries.tar.xz" "$stage"
fi
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
