#!/usr/bin/env bash
# The attention and decoder changes checked and measured in one call on the device machine
# (about 6 minutes on an H200), everything under $OUT (./perf-out when unset):
#   1. the GPU tests that cover them: the attention kernels in every precision, window, head
#      width and key split (tests.txt); the few-rows linears; the engine on the golden files
#      in every mode and precision, at the released size against the CPU, and head widths
#      4, 5, 12, 40;
#   2. compute-sanitizer memcheck and racecheck on the attention tests (sanitizer.txt; skipped
#      with a note when compute-sanitizer is not on PATH);
#   3. criterion: `window_attention` (per precision: per window, the engine's splits against
#      unsplit and even splits, the decoder's cross attention) and `linear` (the encoder's and
#      the decoder's linears, f32/tf32/bf16) (kernels.txt);
#   4. benches/engine.rs, every mode x precision x launch, p50 of 100 passes (engine.txt,
#      engine.json).
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here and
# with STAGE_DIR carried): bash STAGE_DIR/perf-attention.sh STAGE_DIR
set -uo pipefail
stage="${1:?usage: perf-attention.sh STAGE_DIR}"
out="${OUT:-perf-out}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"
export ATTNRT_GOLDEN_DIR="$stage/golden"
export ATTNRT_BIN_DIR="$stage/bin"

t="$stage/tests"
step tests 240 "$t/kernels" --test-threads=1 window_attention
step tests 60 "$t/kernels" --test-threads=1 linear
step tests 300 "$t/gpu_engine" --test-threads=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step sanitizer 240 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$t/kernels" --test-threads=1 window_attention::fused window_attention::one_query
  done
else
  echo "compute-sanitizer not on PATH: sanitizer step skipped" | tee -a "$out/status.txt"
fi
step kernels 300 "$stage/bench/kernels" "window_attention|linear" --warm-up-time 0.3 \
  --measurement-time 0.7
step engine 200 "$stage/bench/engine" --reps 100 --precision all --json "$out/engine.json"
steps_failed && exit 1
exit 0
