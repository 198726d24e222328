#!/usr/bin/env bash
# The CNN speed table: PyTorch and attnrt training steps of the five torchvision CNNs on one
# GPU (scripts/torch_cnn_timing.py: batch 64, 224x224 and 32x32, f32 with TF32 off and bf16
# autocast, channels_last; samples/s and peak memory), everything under $OUT (./perf-out
# when unset). Two device calls of under 10 minutes each:
#   PART=eager (default): device.txt; torch eager rows (torch-eager.json, ~4 minutes); attnrt's
#     rows (attnrt.json: attnrt-train on a synthetic job per model, size and precision,
#     `--gpus 0`; rows of models whose GPU path is not built say so); table.md;
#   PART=compile [MODELS] [SIZES]: torch.compile rows (torch-compile.json), each compiled,
#     warmed up and timed alone (`--jobs 1`: compiling several at once disturbed the timed
#     one, torch_cnn_timing.py says how), stopped at $PERF_DEADLINE seconds (default 500):
#     a row takes 1-2 minutes, so the 20 rows need several calls (e.g. MODELS
#     resnet50,alexnet and SIZES 224 in one; default all models at 224 and 32).
# `python3 scripts/torch_cnn_timing.py --table torch-eager.json torch-compile.json --attnrt
# attnrt.json` remakes the table for docs/PERF.md from the fetched files, anywhere.
# attnrt's peak memory is attnrt-train's `gpu memory:` line (the CUDA memory pool's high-water
# mark, attnrt's cached free buffers included: the counterpart of PyTorch's
# max_memory_reserved, which the table shows beside max_memory_allocated).
#
# Usage (repository root on the device machine, after scripts/gpu-stage.sh STAGE_DIR here,
# STAGE_DIR carried): bash STAGE_DIR/perf-cnn.sh STAGE_DIR [eager|compile [MODELS] [SIZES]]
set -uo pipefail
stage="${1:?usage: perf-cnn.sh STAGE_DIR [eager|compile [MODELS] [SIZES]]}"
part="${2:-eager}"
out="${OUT:-perf-out}"
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
steps_begin
device_begin "$stage"
# cuDNN for attnrt-train: PyTorch's, the only one it can reach (cudnn-env.sh says why).
source "$stage/cudnn-env.sh"

case "$part" in
  eager)
    step torch-eager 300 python3 "$stage/torch_cnn_timing.py" --modes eager \
      --json "$out/torch-eager.json"
    step attnrt 240 python3 "$stage/torch_cnn_timing.py" --attnrt-bin "$stage/bin/attnrt-train" \
      --json "$out/attnrt.json"
    python3 "$stage/torch_cnn_timing.py" --table "$out/torch-eager.json" \
      --attnrt "$out/attnrt.json" > "$out/table.md" && cat "$out/table.md"
    ;;
  compile)
    step torch-compile "$(( ${PERF_DEADLINE:-500} + 30 ))" python3 "$stage/torch_cnn_timing.py" \
      --modes compile --jobs 1 --models "${3:-all}" --sizes "${4:-224,32}" \
      --deadline-s "${PERF_DEADLINE:-500}" --json "$out/torch-compile.json"
    ;;
  *)
    echo "perf-cnn.sh: PART is eager or compile, not '$part'" >&2
    exit 2
    ;;
esac
steps_failed && exit 1
exit 0
