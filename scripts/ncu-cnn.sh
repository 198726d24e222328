#!/usr/bin/env bash
# Where a CNN training step's GPU time goes, kernel by kernel, attnrt against PyTorch eager on
# the same card in one call, everything under $OUT (./ncu-cnn-out when unset). Per model and
# precision (default resnet50 in f32 and bf16, batch 64, 224x224, 1000 classes):
#   1. ncu-attnrt-MODEL-PRECISION.csv, ncu-torch-MODEL-PRECISION.csv: ncu's raw page of
#      $NCU_STEPS (default 1) steps after the warm-up (`--profile`: collection only between the
#      profiler's start and stop), one metric (each launch's duration), caches and clocks left
#      as they are (`--cache-control none --clock-control none`: the kernels run as in a step);
#   2. breakdown-MODEL-PRECISION.md: scripts/ncu_step_breakdown.py's table (GPU ms a step per
#      category: convolution passes, cuBLAS GEMMs, batch norm, element-wise, optimizer, ...,
#      and each side's costliest kernels). Kernel time only: the step time in (3) less this sum
#      is the time the GPU waited on the host;
#   3. step-MODEL-PRECISION.txt: the measured step time without a profiler, attnrt's
#      (bench/cnn_step, 10 steps) and PyTorch eager's (torch_cnn_timing.py, channels_last,
#      f32 with TF32 off, bf16 autocast).
# Each step's exit status is in status.txt; the script exits 1 when one failed.
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here with
# ATTNRT_STAGE_BENCHES including cnn_step, STAGE_DIR carried):
#   bash STAGE_DIR/ncu-cnn.sh STAGE_DIR [MODELS] [PRECISIONS]   (comma-separated lists)
set -uo pipefail
stage="${1:?usage: ncu-cnn.sh STAGE_DIR [MODELS] [PRECISIONS]}"
models="${2:-resnet50}"
precisions="${3:-f32,bf16}"
steps="${NCU_STEPS:-1}"
out="${OUT:-ncu-cnn-out}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"
# cuDNN for attnrt: PyTorch's, the only one it can reach (cudnn-env.sh says why).
source "$stage/cudnn-env.sh"
if [ ! -x "$stage/bench/cnn_step" ]; then
  echo "ncu-cnn: $stage/bench/cnn_step is not staged (ATTNRT_STAGE_BENCHES=\"engine kernels" \
    "cnn_step\" scripts/gpu-stage.sh $stage)" | tee -a "$out/status.txt"
  exit 1
fi
ncu="$(find_ncu)"
[ -n "$ncu" ] || echo "ncu: not found on PATH nor under /usr/local/cuda*/bin," \
  "/opt/nvidia/nsight-compute: step times only" | tee -a "$out/status.txt"
ncu_args=(--csv --page raw --print-units base --metrics gpu__time_duration.sum
  --profile-from-start off --cache-control none --clock-control none)

for model in ${models//,/ }; do
  for p in ${precisions//,/ }; do
    tag="$model-$p"
    attnrt=("$stage/bench/cnn_step" --models "$model" --sizes 224 --precisions "$p")
    torch=(python3 "$stage/torch_cnn_timing.py" --modes eager --models "$model" --sizes 224
      --precisions "$p" --warmup 3)
    if [ -n "$ncu" ]; then
      step "ncu-attnrt-$tag" 180 "$ncu" "${ncu_args[@]}" --log-file "$out/ncu-attnrt-$tag.csv" \
        "${attnrt[@]}" --steps "$steps" --profile
      step "ncu-torch-$tag" 180 "$ncu" "${ncu_args[@]}" --log-file "$out/ncu-torch-$tag.csv" \
        "${torch[@]}" --steps "$steps" --profile
      step "breakdown-$tag" 30 python3 "$stage/ncu_step_breakdown.py" \
        --run "attnrt $p" "$steps" "$out/ncu-attnrt-$tag.csv" \
        --run "PyTorch eager $p" "$steps" "$out/ncu-torch-$tag.csv" \
        --json "$out/breakdown-$tag.json"
      cp "$out/breakdown-$tag.txt" "$out/breakdown-$tag.md"
    fi
    step "step-$tag" 120 "${attnrt[@]}" --steps 10
    step "step-$tag" 120 "${torch[@]}" --steps 10
  done
done

steps_failed && exit 1
exit 0
