#!/usr/bin/env bash
# Runs the CUDA kernels that have emulated checks on the host, without a GPU: every thread of
# a block is a fiber (emu.h), so barriers, warp shuffles, mma.sync fragments and cp.async
# (deferred to the wait that covers it) behave as the PTX ISA describes them, shared memory
# starts NaN, and a missing barrier or wait shows as a wrong or unfinished result. The
# checks compare against float64 loops (the same cases as the GPU tests, smaller):
#   window_attention: kernels/window_attention.cu, every precision, window, head width
#     (1-128), key split and the fused launch;
#   linear: kernels/linear.cu's tile and few-rows kernels, every epilogue and precision.
# What it cannot see: timing, memory-model effects between blocks (blocks run one after
# another), and anything the PTX ISA leaves to the hardware (the GPU tests cover those).
# Usage: scripts/emulator/run.sh [window_attention|linear] [GROUP]   (needs g++)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/attnrt-emulator"
mkdir -p "$out"
what="${1:-all}"
if [ "$what" = all ] || [ "$what" = window_attention ]; then
  g++ -std=c++17 -O1 -I"$here/../../kernels" -o "$out/window_attention" "$here/window_attention.cpp"
  "$out/window_attention" "${2:-}"
fi
if [ "$what" = all ] || [ "$what" = linear ]; then
  g++ -std=c++17 -O1 -I"$here/../../kernels" -o "$out/linear_rows" "$here/linear.cpp"
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -DTILES -I"$here/../../kernels" -o "$out/linear_tiles" \
    "$here/linear.cpp"
  "$out/linear_rows"
  "$out/linear_tiles"
fi
