#!/usr/bin/env bash
# Unpacks the executables scripts/gpu-stage.sh packed into STAGE_DIR/binaries.tar.xz (bin/,
# tests/, bench/), once. Used by run-gpu-tests.sh and perf-transformer.sh on the device machine.
# Usage: bash STAGE_DIR/unpack-stage.sh STAGE_DIR
set -euo pipefail
stage="${1:?usage: unpack-stage.sh STAGE_DIR}"
if [ -f "$stage/binaries.tar.xz" ] && [ ! -d "$stage/tests" ]; then
  # Python's tarfile, since the device machine may lack the xz tool.
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$stage/binaries.tar.xz" "$stage"
fi
