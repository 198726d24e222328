#!/usr/bin/env bash
# Runs the CUDA kernels that have emulated checks on the host, without a GPU: every thread of
# a block is a fiber (emu.h), so barriers, warp shuffles, mma.sync fragments and cp.async
# (deferred to the wait that covers it) behave as the PTX ISA describes them, shared memory
# starts NaN, and a missing barrier or wait shows as a wrong or unfinished result. The
# checks compare against float64 loops (the same cases as the GPU tests, smaller):
#   window_attention: kernels/window_attention.cu, every precision, window, head width
#     (1-128), key split and the fused launch;
#   linear: kernels/linear.cu's tile and few-rows kernels, every epilogue and precision (the
#     split-k LayerNorm's counters included);
#   layer_norm: kernels/layer_norm.cu's forwards, every width kernel (256, 512, 1024) on rows
#     on both sides of each limit: values, xhat and rstd, the same bits from every kernel that
#     holds a row, the training forward's y the inference forward's;
#   max_pool: kernels/max_pool.cu's forward (f32, bf16: values and argmax) and backward;
#   crop: kernels/crop.cu against the tracker's CPU crop (the Rust test builds and feeds it:
#     random frames and boxes, partly outside the frame, every resize path, bit for bit);
#   soft_argmax: kernels/soft_argmax.cu (block reductions in f64, f32 and bf16 scores);
#   conv2d: kernels/conv2d.cu's bf16 bias gradient (partial sums per chunk, then in order);
#   cnn_ops: kernels/batch_norm.cu (split reductions, finalize, normalisation, fused ReLU,
#     running update, backward, synchronised batch norm's moments; the element-wise ones at
#     every vector width),
#     avg_pool.cu, dropout.cu (the CPU's mask), channel_copy.cu and elementwise.cu's
#     vectorised add, add+ReLU and ReLU backward.
# What it cannot see: timing, memory-model effects between blocks (blocks run one after
# another), and anything the PTX ISA leaves to the hardware (the GPU tests cover those).
# Usage: scripts/emulator/run.sh [window_attention|linear|layer_norm|max_pool|crop|soft_argmax|conv2d|cnn_ops] [GROUP]
# (needs g++)
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
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -I"$here/../../kernels" -o "$out/linear_rows" \
    "$here/linear.cpp"
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -DTILES -I"$here/../../kernels" -o "$out/linear_tiles" \
    "$here/linear.cpp"
  "$out/linear_rows"
  "$out/linear_tiles"
fi
if [ "$what" = all ] || [ "$what" = layer_norm ]; then
  g++ -std=c++17 -O1 -I"$here/../../kernels" -o "$out/layer_norm" "$here/layer_norm.cpp"
  "$out/layer_norm"
fi
if [ "$what" = all ] || [ "$what" = max_pool ]; then
  # include/ stands in for the CUDA headers the kernel includes (bf16 storage).
  g++ -std=c++17 -O1 -I"$here/include" -I"$here/../../kernels" -o "$out/max_pool" "$here/max_pool.cpp"
  "$out/max_pool"
fi
if [ "$what" = all ] || [ "$what" = crop ]; then
  (cd "$here/../.." && cargo test --release --test kernels crop_kernel_on_the_host_emulator)
fi
if [ "$what" = all ] || [ "$what" = soft_argmax ]; then
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -I"$here/../../kernels" -o "$out/soft_argmax" "$here/soft_argmax.cpp"
  "$out/soft_argmax"
fi
if [ "$what" = all ] || [ "$what" = conv2d ]; then
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -I"$here/include" -I"$here/../../kernels" -o "$out/conv2d" "$here/conv2d.cpp"
  "$out/conv2d"
fi
if [ "$what" = all ] || [ "$what" = cnn_ops ]; then
  g++ -std=c++17 -O1 -DEMU_STATIC_SHARED -I"$here/include" -I"$here/../../kernels" -o "$out/cnn_ops" \
    "$here/cnn_ops.cpp"
  "$out/cnn_ops"
fi
