#!/usr/bin/env bash
# The whole tracker against the original CSWinTT tracker's network, on one GPU in one call on
# the device machine (about 9 minutes; at most $PERF_BUDGET seconds, default 560), everything
# written under $OUT (./perf-out when unset) as soon as each step has it:
#   1. device.txt: the card;
#   2. weights: the original's tracker at the released size with its own initialisation (seed
#      0), saved by scripts/original_cswintt.py --save-state-dict and converted by
#      scripts/convert_checkpoint.py, so both sides run the same weights (tracker.safetensors);
#   3. ours: the whole tracking step (crop -> box) on random 1280x720 frames, `attnrt-infer
#      --model tracker.safetensors` in every mode x precision, eager and one CUDA graph a step
#      (p50/p90/p99, frames/s, device memory, the stages): ours.jsonl, one JSON line each, and
#      tracker.json, the rows in benches/engine.rs's format;
#   4. the best configuration of step 3 traced, one span per stage (trace.txt, its stage
#      table and every operation timed on its own, `--ops`; tracker-trace.json, the Chrome
#      trace), and a 1000-frame sequence of 1280x720
#      JPEGs made here (scripts/make_jpeg_sequence.py), tracked end to end in it, decoding
#      included (jpeg.json);
#   5. the original's network work for one frame (search backbone + transformer + heads, batch
#      1; the crop is not in it): eager, torch.compile default and reduce-overhead, f32 (TF32
#      off) and bf16 autocast, peak memory beside each (original.json, original-bench.txt),
#      with what is left of the budget;
#   6. table.md: scripts/perf_table.py's side-by-side table and the modes table (streams
#      against sequential, the thesis's figure) for docs/PERF.md.
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here, with
# STAGE_DIR and ORIGINAL_DIR carried): bash STAGE_DIR/perf-tracker.sh STAGE_DIR ORIGINAL_DIR
#
# Or, where the step's time goes, without the original (about 1 minute, STAGE_DIR carried):
#   bash STAGE_DIR/perf-tracker.sh STAGE_DIR --ops [MODEL]
# runs `attnrt-infer --model MODEL --mode fused --graph --ops` in f32, tf32 and bf16: the
# step's timing, then every operation of one step timed on its own (each convolution's
# shape, cuDNN's algorithm, GPU us in a graph, TFLOP/s, host us, eager us), in
# ops-PRECISION.txt. MODEL defaults to tracker_s1's weights, made from the staged golden
# file's recipe (real crop sizes and ResNet-50 to layer3, a small transformer).
set -uo pipefail
usage="usage: perf-tracker.sh STAGE_DIR ORIGINAL_DIR | STAGE_DIR --ops [MODEL]"
stage="${1:?$usage}"
original="${2:?$usage}"
out="${OUT:-perf-out}"
budget="${PERF_BUDGET:-560}"
iters="${PERF_ITERS:-300}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"
source "$stage/cudnn-env.sh"

if [ "$original" = "--ops" ]; then
  model="${3:-$out/tracker_s1.safetensors}"
  [ -n "${3:-}" ] || step weights 60 python3 "$stage/golden/make_weights.py" \
    "$stage/golden/tracker_s1.golden.safetensors" "$model"
  for precision in f32 tf32 bf16; do
    step "ops-$precision" 120 "$stage/bin/attnrt-infer" --model "$model" --device cuda \
      --mode fused --precision "$precision" --graph --iters "$iters" --warmup 30 --ops
  done
  [ -n "${3:-}" ] || rm -f "$model"
  steps_failed && exit 1
  exit 0
fi

model="$out/tracker.safetensors"
step weights 120 bash -c "python3 '$stage/original_cswintt.py' --original '$original' \
  --save-state-dict '$out/tracker.pth' && python3 '$stage/convert_checkpoint.py' \
  '$out/tracker.pth' -o '$model' && rm -f '$out/tracker.pth'"

: > "$out/ours.jsonl"
for precision in f32 tf32 bf16; do
  for mode in sequential streams fused; do
    for launch in eager graph; do
      flag=()
      [ "$launch" = graph ] && flag=(--graph)
      line="$(timeout 120 "$stage/bin/attnrt-infer" --model "$model" --device cuda \
        --mode "$mode" --precision "$precision" "${flag[@]}" --iters "$iters" --warmup 30 --json)"
      rc=$?
      echo "ours $precision $mode $launch rc=$rc" | tee -a "$out/status.txt"
      [ $rc -eq 0 ] && echo "{\"precision\": \"$precision\", \"mode\": \"$mode\", \"launch\": \"$launch\", \"run\": $line}" \
        >> "$out/ours.jsonl"
    done
  done
done
python3 - "$out" "$iters" <<'EOF'
import json, pathlib, sys
out, iters = pathlib.Path(sys.argv[1]), int(sys.argv[2])
device = (out / "device.txt").read_text().splitlines()[-1].split(",")[0].strip()
rows = []
for line in (out / "ours.jsonl").read_text().splitlines():
    r = json.loads(line)
    run = r["run"]
    row = {"part": "frame", "batch": 1, "precision": r["precision"], "mode": r["mode"],
           "launch": r["launch"], "p50_ms": run["latency_ms"]["p50"],
           "p90_ms": run["latency_ms"]["p90"], "p99_ms": run["latency_ms"]["p99"],
           "stages_ms": run.get("stages_ms")}
    if run.get("device_memory_bytes"):
        row["peak_mib"] = run["device_memory_bytes"] / 2**20
    rows.append(row)
(out / "tracker.json").write_text(json.dumps({
    "device": device, "reps": iters, "warmup": 30, "batch": 1, "rows": rows,
    "source": "`attnrt-infer --model TRACKER` (the whole step, crop -> box, on random 1280x720 "
              "frames; device memory: the driver's figure for the whole device)"}, indent=1))
EOF

# The best configuration of ours, end to end on JPEGs.
best="$(python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
b = min(rows, key=lambda r: r["p50_ms"])
print(b["precision"], b["mode"], "--graph" if b["launch"] == "graph" else "")
' "$out/tracker.json")"
read -r bprec bmode bgraph <<< "$best"
# shellcheck disable=SC2086 # $bgraph is empty or one flag
step trace 60 "$stage/bin/attnrt-infer" --model "$model" --device cuda --mode "$bmode" \
  --precision "$bprec" $bgraph --iters 20 --warmup 5 --trace "$out/tracker-trace.json" --ops
step jpeg-make 120 python3 "$stage/make_jpeg_sequence.py" "$out/jpeg-seq" --frames 1000
step jpeg 180 bash -c "'$stage/bin/attnrt-infer' --model '$model' --device cuda --mode $bmode \
  --precision $bprec $bgraph --frames '$out/jpeg-seq' --json > '$out/jpeg.json'"
rm -rf "$out/jpeg-seq"

# The original last, with what is left of the budget (its compiles load every core, so they
# must not run beside our timings).
left=$((budget - SECONDS - 30))
[ "$left" -lt 200 ] && left=200
prepare_by=$((left - 70))
step original-bench "$left" python3 "$stage/original_cswintt.py" --original "$original" --bench \
  --device cuda --parts frame --batches 1 --precisions f32,bf16 \
  --variants eager,compile,reduce-overhead --iters 200 --warmup 20 --max-seconds 1.5 \
  --compile-timeout "$prepare_by" --prepare-by "$prepare_by" --json "$out/original.json"
step table 20 python3 "$stage/perf_table.py" --engine "$out/tracker.json" \
  --original "$out/original.json" --jpeg "$out/jpeg.json" --out "$out/table.md"

steps_failed && exit 1
exit 0
