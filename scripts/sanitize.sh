#!/usr/bin/env bash
# Every kernel test under compute-sanitizer's four tools, on the device machine: memcheck
# (out-of-bounds and misaligned accesses, leaks), racecheck (shared-memory hazards between the
# threads of a block), initcheck (reads of device memory nothing wrote) and synccheck (barriers
# that not every thread reaches, bad masks on warp operations). The test executables that
# launch kernels are run: `kernels` (every op against its CPU reference, odd shapes), and the
# engines' GPU tests where they are staged (`gpu_engine`, `train_gpu`, `tracker_gpu`,
# `train_cnn_gpu`). SANITIZE_TESTS="NAME[:ARGS] ..." runs others or fewer, ARGS being libtest
# arguments separated by commas (e.g. `gpu_engine:golden_tiny`: every mode and precision on the
# small golden files, for a tool that is too slow on the released size; `kernels:--skip,conv2d`:
# every kernel test but cuDNN's convolutions). SANITIZE_LIMIT_S overrides each run's time limit.
# Several instances may run at once on one GPU (each with its own $OUT) to share a call's time.
#
# cuBLAS/cuBLASLt and cuDNN launch kernels of their own; their reports are kept apart in the
# summary (a finding there is theirs or our misuse of them: read it before dismissing it).
#
# Output under $OUT (./perf-out when unset): sanitizer-TOOL-TEST.txt, one per run (TEST with
# its arguments, other characters as `_`), and
# sanitizer-summary.txt: per run, its exit status, seconds, the error count compute-sanitizer
# printed and the run's peak host memory (peak_rss, MiB); after runs killed by a signal, the
# kernel log's lines on killed processes. Exit 1 when any run found an error or failed.
#
# Usage (repository root on the device machine, STAGE_DIR carried):
#   bash STAGE_DIR/sanitize.sh STAGE_DIR [TOOL...]     (default: all four tools)
set -uo pipefail
stage="${1:?usage: sanitize.sh STAGE_DIR [TOOL...]}"
shift
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(memcheck racecheck initcheck synccheck)
out="${OUT:-perf-out}"
mkdir -p "$out"
summary="$out/sanitizer-summary.txt"
: > "$summary"
bash "$stage/unpack-stage.sh" "$stage" || exit 1
source "$stage/test-env.sh" "$stage"
if ! command -v compute-sanitizer >/dev/null; then
  echo "compute-sanitizer is not on PATH: nothing checked" | tee "$summary"
  exit 1
fi

# Seconds a tool may take per test executable: racecheck and initcheck slow kernels the most.
limit() {
  if [ -n "${SANITIZE_LIMIT_S:-}" ]; then
    echo "$SANITIZE_LIMIT_S"
    return
  fi
  case "$1" in
    memcheck) echo 240 ;;
    racecheck) echo 300 ;;
    initcheck) echo 240 ;;
    *) echo 180 ;;
  esac
}

failed=0
for tool in "${tools[@]}"; do
  for test in ${SANITIZE_TESTS:-kernels gpu_engine train_gpu tracker_gpu train_cnn_gpu}; do
    name="${test%%:*}"
    filter=()
    [ "$name" = "$test" ] || IFS=, read -ra filter <<< "${test#*:}"
    exe="$stage/tests/$name"
    [ -x "$exe" ] || continue
    log="$out/sanitizer-$tool-$(tr -c 'A-Za-z0-9_\n' _ <<< "$test").txt"
    start=$SECONDS
    # peak_rss: the largest resident set of the run's processes (compute-sanitizer or the test),
    # so a run ended by the out-of-memory killer (exit status 9 or 137, no summary) shows how
    # much host memory it held.
    python3 "$stage/peak-rss.py" "$log.rss" timeout "$(limit "$tool")" compute-sanitizer \
      --tool "$tool" --error-exitcode 1 --print-limit 20 "$exe" --test-threads=1 "${filter[@]}" \
      > "$log" 2>&1
    rc=$?
    errors="$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$log" | awk '{ s += $3 } END { print s + 0 }')"
    libs="$(grep -Ec '(cublas|cudnn|cutlass|sm90_xmma|ampere_|cutensor)' "$log")"
    rss="$(cat "$log.rss" 2>/dev/null || echo -)"
    rm -f "$log.rss"
    echo "$tool $test rc=$rc $((SECONDS - start))s errors=$errors library-lines=$libs peak_rss=$rss" |
      tee -a "$summary"
    [ "$rc" -eq 0 ] || failed=1
  done
done
# A run killed by a signal (no summary of its own): what the kernel log says of killed
# processes (the out-of-memory killer names them), where the log is readable.
if grep -Eq ' rc=(9|137) ' "$summary"; then
  dmesg 2>/dev/null | grep -Ei 'killed process|out of memory' | tail -20 | sed 's/^/dmesg: /' |
    tee -a "$summary"
fi
exit "$failed"
