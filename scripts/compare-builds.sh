#!/usr/bin/env bash
# Times two builds on the same GPU in one call, interleaved so that clock and thermal drift
# hit both alike: the engine bench (every mode x precision x launch, p50 of 101 event-timed
# passes: an odd count, so that the older nearest-rank-or-rounded p50 and today's pick the same
# sample) and one training throughput run (vit-small, 200 iterations of batch 256, f32), twice
# each, alternating. For checking that a change which should not move performance
# does not. Results under $OUT: engine-{prev,new}-{1,2}.json and .txt, train-*.txt, and
# compare.txt (a table of the p50s side by side, from compare_engine.py).
#
# Usage (on the device machine, both stages carried; each holds binaries.tar.xz with at
# least bin/attnrt-train and bench/engine):
#   bash STAGE/compare-builds.sh PREV_STAGE NEW_STAGE
set -uo pipefail
prev="${1:?usage: compare-builds.sh PREV_STAGE NEW_STAGE}"
new="${2:?usage: compare-builds.sh PREV_STAGE NEW_STAGE}"
out="${OUT:-perf-out}"
mkdir -p "$out"
export ATTNRT_REQUIRE_GPU=1
for s in "$prev" "$new"; do
  bash "$new/unpack-stage.sh" "$s" || exit 1
done
job="$(mktemp --suffix=.toml)"
sed 's/^iterations = .*/iterations = 200/' "$new/train-vit-synthetic.toml" > "$job"
for round in 1 2; do
  for which in prev new; do
    stage="$prev"; [ "$which" = new ] && stage="$new"
    echo "=== engine $which $round"
    timeout 200 "$stage/bench/engine" --reps 101 --warmup 10 --precision all \
      --json "$out/engine-$which-$round.json" > "$out/engine-$which-$round.txt" 2>&1
    tail -n 30 "$out/engine-$which-$round.txt"
    echo "=== train $which $round"
    timeout 200 "$stage/bin/attnrt-train" --jobs "$job" --gpus 0 \
      > "$out/train-$which-$round.txt" 2>&1
    tail -n 2 "$out/train-$which-$round.txt"
  done
done
python3 "$new/compare_engine.py" "$out"/engine-prev-*.json -- "$out"/engine-new-*.json \
  | tee "$out/compare.txt"
grep -h '^done:' "$out"/train-*.txt
