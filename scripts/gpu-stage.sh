#!/usr/bin/env bash
# Builds the release binaries, every test executable and the benchmarks with kernels compiled
# in, and stages them (with the golden files, the PyTorch scripts and the scripts that run
# them) into stage/, a git-ignored folder to `carry` to the device machine, which has no Rust
# toolchain. Prints the commands that run every GPU test there, and the measurements against
# the original CSWinTT code.
#
# Usage: [ATTNRT_STAGE_BENCHES="engine kernels ..."|all] scripts/gpu-stage.sh [STAGE_DIR]
#        (default stage: stage)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stage="${1:-stage}"
[ -f .cuda/nvcc-path ] || command -v nvcc >/dev/null || scripts/setup-cuda.sh

cargo build --release --features require-kernels --bins
# The test executables' paths, from cargo's JSON messages.
mapfile -t tests < <(cargo test --release --features require-kernels --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
')

# The benchmarks (`harness = false`: plain programs such as benches/engine.rs, and criterion's
# own main, as benches/kernels.rs).
mapfile -t benches < <(cargo bench --features require-kernels --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and "bench" in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])
')

rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/tests" "$stage/bench" "$stage/golden"
target="${CARGO_TARGET_DIR:-target}"
cp "$target"/release/attnrt-infer "$target"/release/attnrt-train "$stage/bin/"
for t in "${tests[@]}"; do
  # Drop cargo's hash suffix so the names are stable: gpu_smoke-0123abcd -> gpu_smoke.
  name="$(basename "$t")"
  # Test executables that never touch a GPU (the library's and the binaries' unit tests, the
  # scheduler's, the fuzz targets, the CPU references' and the CNNs' CPU path, the two-minute
  # cpu:4 soak): CI runs them; staging them would only spend device minutes and carry space.
  case "${name%-*}" in
    attnrt | attnrt_infer | attnrt_train | soak | fuzz | sched_sim | sched_cli | sched_policy | \
      sched_minmax | cswintt_cpu | cswintt_golden | tracker_cpu | train_cpu | train_cnn) continue ;;
  esac
  cp "$t" "$stage/tests/${name%-*}"
done
# Each benchmark embeds every kernel (about 10 MB): only those the device scripts run travel
# unless ATTNRT_STAGE_BENCHES names others ("all" for every one), so the stage and the
# repository fit the device tool's 64 MiB.
want_benches=" ${ATTNRT_STAGE_BENCHES:-engine kernels cnn_step} "
for b in "${benches[@]}"; do
  name="$(basename "$b")"
  case "$want_benches" in
    " all " | *" ${name%-*} "*) cp "$b" "$stage/bench/${name%-*}" ;;
  esac
done
strip "$stage"/bin/* "$stage"/tests/* "$stage"/bench/*
golden="${ATTNRT_GOLDEN_DIR:-$root/../shared/golden}"
# make_weights.py makes the tracker golden's weights from the recipe in its metadata.
cp -r "$golden"/*.safetensors "$golden"/make_weights.py "$golden"/*_frames "$golden"/train \
  "$stage/golden/"
cp scripts/unpack-stage.sh scripts/run-gpu-tests.sh scripts/perf-transformer.sh \
  scripts/original_cswintt.py scripts/torch_reference.py scripts/torch_timing.py \
  scripts/perf_table.py scripts/compare-builds.sh scripts/compare_engine.py \
  scripts/perf-attention.sh scripts/perf-tracker.sh scripts/convert_checkpoint.py \
  scripts/make_jpeg_sequence.py scripts/steps.sh scripts/sanitize.sh scripts/peak-rss.py \
  scripts/cudnn-env.sh scripts/test-env.sh scripts/ncu-transformer.sh scripts/ncu_roofline.py \
  examples/train-vit-synthetic.toml "$stage/"
# The CNNs against PyTorch: the speed table and the loss curves.
cp scripts/perf-cnn.sh scripts/torch_cnn_timing.py scripts/compare_loss_curves.py \
  scripts/ncu-cnn.sh scripts/ncu_step_breakdown.py \
  scripts/export_torchvision.py scripts/plot_loss_curves.py scripts/multijob-experiment.py \
  examples/cnn-share-1gpu.toml "$stage/"
# Every executable embeds the kernels' fatbins (about 10 MB each), more than the device tool
# carries (64 MiB): ship them compressed; unpack-stage.sh unpacks them there.
tar -C "$stage" -cf - bin tests bench | xz -T0 -6 > "$stage/binaries.tar.xz"
rm -rf "$stage/bin" "$stage/tests" "$stage/bench"

du -sh "$stage"
echo
echo "On the device machine (carry '$stage'), every GPU test:"
echo "  bash $stage/run-gpu-tests.sh $stage"
echo "ours against the original CSWinTT code (about 8 minutes; results under \$OUT; carry also"
echo "'orig', a checkout of the original repository, SkyeSong38/CSWinTT, git-ignored):"
echo "  bash $stage/perf-transformer.sh $stage orig"
echo "the attention and linear checks and measurements (about 6 minutes; under \$OUT):"
echo "  bash $stage/perf-attention.sh $stage"
echo "each kernel of the transformer against the roofline (ncu), and frames/s at batch 1, 8"
echo "and 32 (about 5 minutes; under \$OUT):"
echo "  bash $stage/ncu-transformer.sh $stage"
echo "every kernel test under compute-sanitizer's memcheck, racecheck, initcheck, synccheck"
echo "(about 15 minutes; results under \$OUT, summary in sanitizer-summary.txt):"
echo "  bash $stage/sanitize.sh $stage"
echo "the whole tracker against the original's (about 9 minutes; under \$OUT; carry 'orig'):"
echo "  bash $stage/perf-tracker.sh $stage orig"
echo "the CNN speed table against PyTorch (two calls of under 10 minutes; under \$OUT):"
echo "  bash $stage/perf-cnn.sh $stage eager; bash $stage/perf-cnn.sh $stage compile"
echo "where a CNN training step's GPU time goes, kernel by kernel, against PyTorch eager (ncu;"
echo "ResNet-50 in f32 and bf16 by default, about 4 minutes; under \$OUT):"
echo "  bash $stage/ncu-cnn.sh $stage [MODELS] [PRECISIONS]"
