#!/usr/bin/env bash
# The transformer's kernels against the card's roofline, and its throughput at batch 1, 8 and
# 32, on one GPU in one call on the device machine (about 5 minutes; at most $NCU_BUDGET
# seconds, default 330), everything under $OUT (./ncu-out when unset):
#   1. device.txt: the card;
#   2. engine-batches.json / batches.txt: benches/engine.rs at batches $NCU_BATCHES (default
#      1,8,32), fused and streams modes, every precision, eager and graph: p50, frames/s and the
#      fraction of the precision's peak;
#   3. trace/transformer_fused{,_bf16}.json: the stages of one eager pass of the fused
#      transformer in f32 and bf16, timed by CUDA events (`--trace-dir`; no counters needed);
#   4. ncu-query.txt: the metrics this card's ncu knows (`ncu --query-metrics`); the script's
#      metric list less the unknown ones (metrics-left-out.txt);
#   5. ncu-PART-PRECISION.csv for the encoder and the whole transformer in f32 and bf16: ncu's
#      raw page of $NCU_REPS (default 1) eager passes of the fused engine (graphs off, so each
#      kernel is its own launch), only the timed passes (`--profile`, collection off from the
#      start), clocks left at boost (`--clock-control none`, so the datasheet peaks apply);
#      caches flushed before each kernel (ncu's default), so DRAM bytes are cold-cache bytes.
#      When ncu rejects the list, the run is repeated with the metrics a table needs;
#   6. roofline.md / roofline.json: scripts/ncu_roofline.py's tables for docs/PERF.md (it runs
#      anywhere: `python3 scripts/ncu_roofline.py table --device NAME --run PART PRECISION CSV
#      ... --engine engine-batches.json --trace PRECISION JSON ...` remakes them from the
#      fetched files).
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here, with
# STAGE_DIR carried): bash STAGE_DIR/ncu-transformer.sh STAGE_DIR
set -uo pipefail
stage="${1:?usage: ncu-transformer.sh STAGE_DIR}"
out="${OUT:-ncu-out}"
budget="${NCU_BUDGET:-330}"
reps="${NCU_REPS:-1}"
batches="${NCU_BATCHES:-1,8,32}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"

device="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

step batches 90 "$stage/bench/engine" --reps 50 --warmup 5 --precision all --batch "$batches" \
  --modes fused,streams --json "$out/engine-batches.json"

# Stage times from CUDA events (one eager pass each, after the timed ones): they need no
# profiler counters, so they stand if ncu cannot read them.
for precision in f32 bf16; do
  step "trace-$precision" 40 "$stage/bench/engine" --reps 5 --warmup 3 --precision "$precision" \
    --modes fused --parts transformer --launch eager --trace-dir "$out/trace"
done

ncu="$(find_ncu)"
if [ -z "$ncu" ]; then
  echo "ncu: not found on PATH nor under /usr/local/cuda*/bin, /opt/nvidia/nsight-compute" \
    | tee -a "$out/status.txt"
else
  "$ncu" --version > "$out/ncu-version.txt" 2>&1
  "$ncu" --query-metrics > "$out/ncu-query.txt" 2>&1
  metrics="$(python3 "$stage/ncu_roofline.py" metrics --query "$out/ncu-query.txt" \
    2> "$out/metrics-left-out.txt")"
  core="$(python3 "$stage/ncu_roofline.py" metrics --core)"
  # PART PRECISION METRICS: the ncu command line of one run (`timeout` runs programs, not
  # shell functions).
  ncu_command() {
    cmd=("$ncu" --csv --page raw --print-units base --metrics "$3" --profile-from-start off
      --clock-control none --log-file "$out/ncu-$1-$2.csv"
      "$stage/bench/engine" --reps "$reps" --warmup 2 --precision "$2" --modes fused
      --parts "$1" --launch eager --profile)
  }
  for run in "encoder bf16" "encoder f32" "transformer bf16" "transformer f32"; do
    read -r part precision <<< "$run"
    logs=("$out/ncu-$part-$precision.csv" "$out/ncu-$part-$precision.txt")
    # Each run gets what is left of the budget, up to 90 s, less the table's 20 s.
    limit=$((budget - SECONDS - 20))
    [ "$limit" -gt 90 ] && limit=90
    if [ "$limit" -lt 20 ]; then
      echo "ncu-$part-$precision: skipped, the budget is spent" | tee -a "$out/status.txt"
      continue
    fi
    ncu_command "$part" "$precision" "$metrics"
    step "ncu-$part-$precision" "$limit" "${cmd[@]}"
    if ! grep -q '^"ID"' "${logs[0]}" 2>/dev/null \
      && cat "${logs[@]}" 2>/dev/null | grep -qi 'metric'; then
      mv "${logs[0]}" "$out/ncu-$part-$precision-rejected.txt"
      limit=$((budget - SECONDS - 20))
      [ "$limit" -gt 90 ] && limit=90
      if [ "$limit" -ge 20 ]; then
        ncu_command "$part" "$precision" "$core"
        step "ncu-$part-$precision-core" "$limit" "${cmd[@]}"
      fi
    fi
    # A card whose counters this user may not read fails every run alike: say so once.
    if cat "${logs[@]}" 2>/dev/null | grep -q 'ERR_NVGPUCTRPERM'; then
      echo "ncu: no permission to read the GPU's counters (ERR_NVGPUCTRPERM): no roofline" \
        | tee -a "$out/status.txt"
      break
    fi
  done
fi

runs=()
for run in "encoder bf16" "encoder f32" "transformer bf16" "transformer f32"; do
  read -r part precision <<< "$run"
  runs+=(--run "$part" "$precision" "$out/ncu-$part-$precision.csv")
done
step table 20 python3 "$stage/ncu_roofline.py" table --device "$device" --passes "$reps" \
  --engine "$out/engine-batches.json" "${runs[@]}" \
  --trace f32 "$out/trace/transformer_fused.json" \
  --trace bf16 "$out/trace/transformer_fused_bf16.json" \
  --out "$out/roofline.md" --json "$out/roofline.json"

steps_failed && exit 1
exit 0
