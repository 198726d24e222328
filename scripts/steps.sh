# The device scripts' steps (sourced by perf-tracker.sh, perf-transformer.sh,
# perf-attention.sh and perf-cnn.sh, from the folder they run from: scripts/ here, the stage folder on the
# device machine). Results go under $out, which the sourcing script sets.
#
# steps_begin: makes $out and starts an empty $out/status.txt.
# device_begin STAGE: unpacks STAGE's executables (or exits 1), makes a missing GPU fail every
#   step instead of skipping it (ATTNRT_REQUIRE_GPU=1) and records the card in $out/device.txt.
# step NAME LIMIT_S COMMAND...: runs COMMAND for at most LIMIT_S seconds, its output to the
#   terminal and appended to $out/NAME.txt (several steps may share a name), and records
#   "NAME rc=STATUS SECONDSs: COMMAND" in $out/status.txt.
# find_ncu: prints the path of Nsight Compute's ncu (PATH, /usr/local/cuda*/bin,
#   /opt/nvidia/nsight-compute), nothing when there is none.
# steps_failed: prints the status lines whose exit status is not 0 and succeeds when there is
#   one (a script ends with `steps_failed && exit 1`).

steps_begin() {
  mkdir -p "$out"
  : > "$out/status.txt"
}

device_begin() {
  bash "$1/unpack-stage.sh" "$1" || exit 1
  export ATTNRT_REQUIRE_GPU=1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv \
    > "$out/device.txt" 2>&1
  cat "$out/device.txt"
}

step() {
  local name="$1" limit="$2"
  shift 2
  echo "=== $name: $*" | tee -a "$out/$name.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc $((SECONDS - start))s: $*" | tee -a "$out/status.txt"
}

find_ncu() {
  command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null \
    | head -1
}

# Lines without an `rc=` are notes (a step skipped on purpose); `rc=0` is a success only when
# a space or the line's end follows it.
steps_failed() {
  local failed
  failed="$(grep -E ' rc=[0-9]' "$out/status.txt" | grep -Ev ' rc=0( |$)')"
  [ -n "$failed" ] || return 1
  echo "some steps failed:"
  echo "$failed"
}
