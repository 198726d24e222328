#!/usr/bin/env bash
# Runs every staged test executable with ATTNRT_REQUIRE_GPU=1, so a missing GPU fails instead of
# skipping, and ends with how many tests ran, were skipped (printed `skipped:`) and failed.
# The environment (the golden files, cuDNN, ATTNRT_GPUS: how many GPUs the tests that need
# several may count on) comes from test-env.sh.
# Staged by scripts/gpu-stage.sh; run from the repository root on the device machine.
# Usage: bash stage/run-gpu-tests.sh [STAGE_DIR] [TEST_NAME_FILTER...]
set -uo pipefail
stage="${1:-stage}"
shift || true
bash "$stage/unpack-stage.sh" "$stage" || exit 1
source "$stage/test-env.sh" "$stage"
log="$(mktemp)"
failed_bins=0
for t in "$stage"/tests/*; do
  echo "=== $(basename "$t")"
  "$t" --test-threads=1 "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed_bins=$((failed_bins + 1))
done
# libtest's summary lines: "test result: ok. 12 passed; 0 failed; 1 ignored; ...".
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) {
  if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
skipped="$(grep -c 'skipped:' "$log")"
rm -f "$log"
echo "test executables failed: $failed_bins (ATTNRT_GPUS=$ATTNRT_GPUS)"
# A skipped test passes too: the skips are counted from their `skipped:` notices.
echo "$passed passed, $failed failed, $skipped skipped"
exit $((failed_bins > 0))
