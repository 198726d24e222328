#!/usr/bin/env bash
# Issue 6's measurements, in one call on the device machine (about 7 minutes on an H100, most of
# it compiling PyTorch; under 9 when the compiles time out), everything written under $OUT
# (./perf-out when unset) as soon as each step has it:
#   1. our engine, every mode x precision x launch: benches/engine.rs, p50 of 100 event-timed
#      passes (engine.txt, engine.json);
#   2. the criterion benches, short times (kernels.txt, encoder.txt; criterion's JSON under
#      criterion/);
#   3. the PyTorch reference: validated on the golden files (torch-validate.txt), then timed
#      eager, as a CUDA graph, and with torch.compile default and reduce-overhead
#      (torch-bench.txt, torch.json). Last, since compiling is the slow and uncertain part: its
#      jobs stop after $PERF_COMPILE_TIMEOUT seconds (default 270) and report an error;
#   4. table.md: scripts/perf_table.py's side-by-side table for docs/PERF.md (it runs anywhere:
#      `python3 scripts/perf_table.py --engine engine.json --torch torch.json --criterion
#      criterion` remakes it from the fetched outputs).
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here and
# with STAGE_DIR carried): bash STAGE_DIR/perf-issue6.sh STAGE_DIR
set -uo pipefail
stage="${1:?usage: perf-issue6.sh STAGE_DIR}"
out="${OUT:-perf-out}"
compile_timeout="${PERF_COMPILE_TIMEOUT:-270}"
mkdir -p "$out"
: > "$out/status.txt"
bash "$stage/unpack-stage.sh" "$stage" || exit 1
# A missing GPU fails every step instead of skipping it.
export ATTNRT_REQUIRE_GPU=1

# step NAME LIMIT_S COMMAND...: runs COMMAND for at most LIMIT_S seconds, its output to the
# terminal and to $out/NAME.txt, and records its exit status.
step() {
  local name="$1" limit="$2"
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/status.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv \
  > "$out/device.txt" 2>&1
cat "$out/device.txt"

step engine 150 "$stage/bench/engine" --reps 100 --warmup 10 --precision all \
  --json "$out/engine.json"
# Criterion keeps its results where CRITERION_HOME says; `--bench` selects measuring (without it
# criterion only runs each bench once, as `cargo test --benches` does).
export CRITERION_HOME="$out/criterion"
for bench in kernels encoder; do
  step "$bench" 150 "$stage/bench/$bench" --bench --noplot --warm-up-time 0.3 \
    --measurement-time 0.7
done

step torch-validate 150 python3 "$stage/torch_reference.py" --validate "$stage/golden" \
  --device cuda
# Eager and CUDA graph take about 30 s; the compile jobs at most $compile_timeout, then about
# 20 s each to time.
step torch-bench $((compile_timeout + 150)) python3 "$stage/torch_reference.py" --bench \
  --device cuda --batch 1 --iters 200 --warmup 20 --compile-timeout "$compile_timeout" \
  --json "$out/torch.json"

step table 60 python3 "$stage/perf_table.py" --engine "$out/engine.json" \
  --torch "$out/torch.json" --criterion "$out/criterion" --out "$out/table.md"

if grep -qv ' rc=0 ' "$out/status.txt"; then
  echo "some steps failed:"
  grep -v ' rc=0 ' "$out/status.txt"
  exit 1
fi
