#!/usr/bin/env bash
# The CNN speed table: PyTorch and attnrt training steps of the five torchvision CNNs on one
# GPU (scripts/torch_cnn_timing.py: batch 64, 224x224 and 32x32, f32 with TF32 off and bf16
# autocast, channels_last; samples/s and peak memory), everything under $OUT (./perf-out
# when unset). Two device calls of under 10 minutes each:
#   PART=eager (default): device.txt; torch eager rows (torch-eager.json, ~4 minutes); attnrt's
#     rows (attnrt.json: attnrt-train on a synthetic job per model, size and precision, f32,
#     f32 with the job's `f32_conv_transforms` and bf16, `--gpus 0`); table.md;
#   PART=compile [MODELS] [SIZES]: torch.compile rows (torch-compile.json), each compiled,
#     warmed up and timed alone (`--jobs 1`: compiling several at once disturbed the timed
#     one, torch_cnn_timing.py says how), stopped at $PERF_DEADLINE seconds (default 500).
#     A fresh compile takes 1-2 minutes a row; Inductor's and Triton's on-disk caches live in
#     the repository's target/ (kept on a warm device machine between calls), and with
#     PERF_WARM=1 all twenty rows are first compiled eight at a time (rows discarded: about
#     250 s on an H100 machine; the timed rows' deadline is then 290 s), after which a timed
#     row takes about 30-40 s. So: one call
#     `PERF_WARM=1 ... compile all 224`, then at once (the machine still warm) `... compile
#     all 32`.
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
      --precisions f32,f32-transforms,bf16 --json "$out/attnrt.json"
    python3 "$stage/torch_cnn_timing.py" --table "$out/torch-eager.json" \
      --attnrt "$out/attnrt.json" > "$out/table.md" && cat "$out/table.md"
    ;;
  compile)
    export TORCHINDUCTOR_CACHE_DIR="$PWD/target/inductor-cache" TRITON_CACHE_DIR="$PWD/target/triton-cache"
    mkdir -p target
    deadline="${PERF_DEADLINE:-500}"
    if [ "${PERF_WARM:-0}" = 1 ]; then
      step torch-compile-warm 260 python3 "$stage/torch_cnn_timing.py" --modes compile --jobs 8 \
        --warmup 1 --steps 3 --deadline-s 240 --json "$out/torch-compile-warm.json"
      deadline="${PERF_DEADLINE:-290}"
    fi
    step torch-compile "$(( deadline + 30 ))" python3 "$stage/torch_cnn_timing.py" \
      --modes compile --jobs 1 --models "${3:-all}" --sizes "${4:-224,32}" \
      --deadline-s "$deadline" --json "$out/torch-compile.json"
    ;;
  *)
    echo "perf-cnn.sh: PART is eager or compile, not '$part'" >&2
    exit 2
    ;;
esac
steps_failed && exit 1
exit 0
