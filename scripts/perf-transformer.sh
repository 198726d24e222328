#!/usr/bin/env bash
# Our transformer against the original CSWinTT code, on one GPU in one call on the device
# machine (about 8 minutes; at most $PERF_BUDGET seconds, default 560), everything written
# under $OUT (./perf-out when unset) as soon as each step has it:
#   1. device.txt: the card;
#   2. our engine, every mode x precision x launch: benches/engine.rs, p50 of 100 event-timed
#      passes (engine.txt, engine.json);
#   3. the original code (ORIGINAL_DIR, a checkout of SkyeSong38/CSWinTT on GitHub) checked on
#      the golden files on the GPU (original-validate.txt): scripts/original_cswintt.py;
#   4. the original timed (original-bench.txt, original.json): encoder and transformer at
#      batches $PERF_BATCHES (default 1,8,32), the tracker's frame at batch 1; eager, CUDA
#      graph, torch.compile default and reduce-overhead; f32 (TF32 off) and bf16 autocast; peak
#      memory beside each. Its compiles run in parallel processes and are stopped
#      $PERF_PREPARE_BY seconds after they start (default 270, less when the budget is short),
#      reported as errors; then every configuration is timed, one at a time;
#   5. table.md: scripts/perf_table.py's table for docs/PERF.md (it runs anywhere:
#      `python3 scripts/perf_table.py --engine engine.json --original original.json` remakes it
#      from the fetched outputs).
# With PERF_CRITERION=1, the criterion benches follow, short times (kernels.txt, encoder.txt;
# criterion's JSON under criterion/); their 100 s or so come out of the compiles' time, so use
# it with PERF_BATCHES=1.
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here, with
# STAGE_DIR and ORIGINAL_DIR carried): bash STAGE_DIR/perf-transformer.sh STAGE_DIR ORIGINAL_DIR
set -uo pipefail
stage="${1:?usage: perf-transformer.sh STAGE_DIR ORIGINAL_DIR}"
original="${2:?usage: perf-transformer.sh STAGE_DIR ORIGINAL_DIR}"
out="${OUT:-perf-out}"
budget="${PERF_BUDGET:-560}"
batches="${PERF_BATCHES:-1,8,32}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"


step engine 120 "$stage/bench/engine" --reps 100 --warmup 10 --precision all \
  --json "$out/engine.json"
step original-validate 90 python3 "$stage/original_cswintt.py" --original "$original" \
  --validate "$stage/golden" --device cuda
# What is left of the budget, less the table's 20 s (and the criterion benches' 110 s): the
# compiles get all of it but the timing's share (about 150 s for the 56 configurations: eager
# ones take up to 3 s each).
reserve=20
[ "${PERF_CRITERION:-0}" = 1 ] && reserve=130
left=$((budget - SECONDS - reserve))
[ "$left" -lt 240 ] && left=240
prepare_by=$((left - 170))
[ "$prepare_by" -gt "${PERF_PREPARE_BY:-270}" ] && prepare_by="${PERF_PREPARE_BY:-270}"
step original-bench "$left" python3 "$stage/original_cswintt.py" --original "$original" --bench \
  --device cuda --batches "$batches" --iters 200 --warmup 20 --max-seconds 1.5 \
  --compile-timeout "$prepare_by" --prepare-by "$prepare_by" --json "$out/original.json"

criterion=()
if [ "${PERF_CRITERION:-0}" = 1 ]; then
  # Criterion keeps its results where CRITERION_HOME says; `--bench` selects measuring
  # (without it criterion only runs each bench once, as `cargo test --benches` does).
  export CRITERION_HOME="$out/criterion"
  for bench in kernels encoder; do
    step "$bench" 150 "$stage/bench/$bench" --bench --noplot --warm-up-time 0.3 \
      --measurement-time 0.7
  done
  criterion=(--criterion "$out/criterion")
fi

step table 20 python3 "$stage/perf_table.py" --engine "$out/engine.json" \
  --original "$out/original.json" "${criterion[@]}" --out "$out/table.md"

steps_failed && exit 1
exit 0
